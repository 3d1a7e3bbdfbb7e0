// Progress output for training runs.

#include <liondg/train/progress.h>

#include <unistd.h>

namespace liondg {
namespace {
std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s % 3600 / 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  }
  return buf;
}
}  // namespace

ProgressPrinter::ProgressPrinter(std::FILE* out, int64_t total_steps, bool interactive, int64_t every)
    : out_(out),
      total_(total_steps),
      interactive_(interactive),
      every_(every > 0 ? every : std::max<int64_t>(1, total_steps / 20)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

bool ProgressPrinter::is_terminal(std::FILE* f) { return ::isatty(::fileno(f)) != 0; }

void ProgressPrinter::on_step(const StepRecord& r) {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(r.step) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - r.step) / rate : NAN;
  if (interactive_) {
    const bool last = r.step == total_;
    if (!last && std::chrono::duration<double>(now - last_draw_).count() < 0.2) return;
    last_draw_ = now;
    std::fprintf(out_, "\r\033[Kstep %lld/%lld | loss %.4f | train acc %.3f (avg %.3f) | %.2f steps/s | ETA %s",
                 static_cast<long long>(r.step), static_cast<long long>(total_), r.loss, r.main_acc, r.window_acc, rate,
                 format_duration(eta).c_str());
    line_open_ = true;
  } else if (r.step % every_ == 0 || r.step == 1 || r.step == total_) {
    std::fprintf(out_, "step %lld/%lld loss %.4f train_acc %.3f avg_acc %.3f steps/s %.2f eta %s\n",
                 static_cast<long long>(r.step), static_cast<long long>(total_), r.loss, r.main_acc, r.window_acc, rate,
                 format_duration(eta).c_str());
  }
  std::fflush(out_);
}

void ProgressPrinter::on_eval(const EvalRecord& e) {
  finish();
  std::fprintf(out_, "eval step %lld: val acc %.4f (main)", static_cast<long long>(e.step), e.main_acc);
  for (size_t k = 0; k < e.aux_accs.size(); ++k) std::fprintf(out_, ", %.4f (aux %zu)", e.aux_accs[k], k);
  std::fprintf(out_, "\n");
  std::fflush(out_);
}

void ProgressPrinter::finish() {
  if (line_open_) {
    std::fprintf(out_, "\n");
    line_open_ = false;
  }
}

}  // namespace liondg
