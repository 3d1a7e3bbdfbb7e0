#pragma once
// Training progress: one updating line on a terminal, plain periodic lines otherwise.

#include <liondg/train/trainer.h>

#include <chrono>
#include <cstdio>

namespace liondg {

class ProgressPrinter : public RecordSink {
 public:
  /// `out` is usually stderr; `interactive` selects the updating line (auto-detect
  /// with `is_terminal`). Plain mode prints every `every` steps (0 = ~20 lines a run).
  ProgressPrinter(std::FILE* out, int64_t total_steps, bool interactive, int64_t every = 0);
  void on_step(const StepRecord& r) override;
  void on_eval(const EvalRecord& e) override;
  /// Ends the updating line (prints a newline if one is pending).
  void finish();
  static bool is_terminal(std::FILE* f);

 private:
  std::FILE* out_;
  int64_t total_;
  bool interactive_;
  int64_t every_;
  bool line_open_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace liondg
