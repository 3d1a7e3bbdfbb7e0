// `liondg bench step|eval`: this project's training step or evaluation, timed alone.

#include "cli/commands.h"

#include <liondg/experiment/bench.h>

#include <nlohmann/json.hpp>

#include <iostream>

namespace liondg::cli {
namespace {

struct BenchArgs {
  ModelSpec spec;
  BenchOptions options;
  bool json = false;
};

void add_bench_options(CLI::App& cmd, BenchArgs& a) {
  add_model_options(cmd, a.spec);
  cmd.add_option("--batch-size", a.options.batch_size(), "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  cmd.add_option("--steps", a.options.steps(), "Timed iterations after the warm-up")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--warmup", a.options.warmup(), "Untimed warm-up iterations")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--threads", a.options.threads(), "Intra-op CPU threads (0 = all cores)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd.add_option("--image-size", a.options.image_size(), "Input height = width")
      ->check(CLI::Range(int64_t{4}, int64_t{1024}))
      ->capture_default_str();
  cmd.add_option("--num-classes", a.options.num_classes(), "Classes")
      ->check(CLI::Range(int64_t{2}, int64_t{100000}))
      ->capture_default_str();
  cmd.add_option("--device", a.options.device(),
                 "cpu, or cuda[:N]: the resident loop's step (device data, CUDA graph), synchronized every step")
      ->check(device_validator())
      ->capture_default_str();
  cmd.add_flag("--json", a.json, "Print JSON");
}

void report(const std::string& what, const BenchArgs& a, const BenchResult& r) {
  if (a.json) {
    nlohmann::json j{{"model", a.spec.name},   {"batch_size", a.options.batch_size()}, {"threads", r.threads},
                     {"median_s", r.median_s}, {"min_s", r.min_s},                     {"steps", a.options.steps()},
                     {"seconds", r.seconds},  {"device", a.options.device()}, {"bf16", a.options.bf16()}};
    if (what == "eval") j["images_per_s"] = static_cast<double>(a.options.batch_size()) / r.median_s;
    std::cout << j.dump() << "\n";
    return;
  }
  std::cout << what << " " << a.spec.name << " batch " << a.options.batch_size() << " on " << a.options.device()
            << ", " << r.threads << " threads: median " << r.median_s << " s, min " << r.min_s << " s over " << a.options.steps()
            << " timed iterations";
  if (what == "eval") std::cout << " (" << static_cast<double>(a.options.batch_size()) / r.median_s << " images/s)";
  std::cout << "\n";
}

}  // namespace

void add_bench_commands(CLI::App& app, int& status) {
  auto* bench = app.add_subcommand("bench", "Time this project's training step or evaluation alone");
  bench->require_subcommand(1);
  auto step = std::make_shared<BenchArgs>();
  auto* s = bench->add_subcommand("step", "Median seconds of the full training step (forward, backward, AdamW)");
  add_bench_options(*s, *step);
  s->add_flag("--bf16", step->options.bf16(),
              "The step with the fused blocks' convolutions on bfloat16 operands (liondg train --bf16)");
  s->callback([step, &status] {
    report("step", *step, bench_train_step(step->spec, step->options));
    status = kExitOk;
  });
  auto eval = std::make_shared<BenchArgs>();
  auto* e = bench->add_subcommand("eval", "Median seconds of one evaluation batch in inference mode");
  add_bench_options(*e, *eval);
  e->callback([eval, &status] {
    report("eval", *eval, bench_eval(eval->spec, eval->options));
    status = kExitOk;
  });
}

}  // namespace liondg::cli
