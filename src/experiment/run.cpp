// One training run end to end, writing the run directory.

#include <liondg/build_info.h>
#include <liondg/errors.h>
#include <liondg/experiment/run.h>
#include <liondg/train/distributed.h>
#include <liondg/train/progress.h>
#include <liondg/util/fs.h>

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/serialize.h>
#include <torch/version.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

namespace liondg {
namespace {

using json = nlohmann::json;

// Writes metrics.csv as training goes: one row per step; validation columns are
// filled on rows where an evaluation happened. Every row is flushed so a crash
// leaves a valid prefix.
class CsvMetricsWriter : public RecordSink {
 public:
  // append: continue a file that already has its header (a resumed run).
  CsvMetricsWriter(const std::string& path, int64_t num_aux, bool append = false)
      : path_(path), num_aux_(num_aux), out_(path, append ? std::ios::app : std::ios::trunc) {
    if (!out_) throw DataError("cannot write '" + path + "'");
    out_.precision(9);
    if (append) return;
    out_ << "step,loss,aux_weight,main_loss";
    for (int64_t k = 0; k < num_aux_; ++k) out_ << ",aux_loss_" << k;
    out_ << ",main_acc";
    for (int64_t k = 0; k < num_aux_; ++k) out_ << ",aux_acc_" << k;
    out_ << ",window_acc,grad_main_norm,grad_aux_norm,grad_ratio";
    for (int64_t k = 0; k < num_aux_; ++k) out_ << ",aux_weight_norm_" << k;
    out_ << ",step_seconds,val_main_acc,val_main_loss";
    for (int64_t k = 0; k < num_aux_; ++k) out_ << ",val_aux_acc_" << k;
    out_ << "\n";
  }
  ~CsvMetricsWriter() override {
    try {
      flush_pending();
    } catch (...) {
      // Destructors must not throw; the error was or will be reported by flush_pending().
    }
  }
  void on_checkpoint(int64_t /*step*/) override { flush_pending(); }

  void on_step(const StepRecord& r) override {
    flush_pending();
    std::ostringstream row;
    row.precision(9);
    row << r.step << ',' << r.loss << ',' << r.aux_weight << ',' << r.main_loss;
    for (double v : r.aux_losses) row << ',' << v;
    row << ',' << r.main_acc;
    for (double v : r.aux_accs) row << ',' << v;
    row << ',' << r.window_acc << ',' << opt(r.grad_main_norm) << ',' << opt(r.grad_aux_norm) << ','
        << opt(r.grad_ratio);
    for (double v : r.aux_weight_norms) row << ',' << v;
    row << ',' << r.seconds;
    pending_ = row.str();
    pending_step_ = r.step;
  }

  void on_eval(const EvalRecord& e) override {
    if (pending_.empty() || e.step != pending_step_) return;
    std::ostringstream row;
    row.precision(9);
    row << ',' << e.main_acc << ',' << e.main_loss;
    for (double v : e.aux_accs) row << ',' << v;
    out_ << pending_ << row.str() << '\n';
    out_.flush();
    pending_.clear();
  }

  void flush_pending() {
    if (pending_.empty()) return;
    out_ << pending_ << ",,";
    for (int64_t k = 0; k < num_aux_; ++k) out_ << ',';
    out_ << '\n';
    out_.flush();
    pending_.clear();
    if (!out_) throw DataError("cannot write '" + path_ + "' (disk full?)");
  }

 private:
  static std::string opt(double v) {
    if (!std::isfinite(v)) return "";
    std::ostringstream s;
    s.precision(9);
    s << v;
    return s.str();
  }
  std::string path_;
  int64_t num_aux_;
  std::ofstream out_;
  std::string pending_;
  int64_t pending_step_ = -1;
};

// Keeps metrics.csv's header and its rows up to `step` (a resumed run continues after
// them; later rows came from the interrupted process after its last checkpoint).
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot resume: '" + path + "' is missing");
  std::string kept, line;
  bool header = true;
  while (std::getline(in, line)) {
    if (!header) {
      const int64_t row = std::atoll(line.substr(0, line.find(',')).c_str());
      if (line.empty() || row < 1 || row > step) continue;
    }
    kept += line + "\n";
    header = false;
  }
  write_file_atomic(path, kept);
}

// The last completed step, for the summary of a run that fails midway.
struct StepCounter : RecordSink {
  int64_t steps = 0;
  void on_step(const StepRecord& r) override { steps = r.step; }
};

json eval_json(const EvalRecord& e) {
  json j{{"step", e.step}, {"main_acc", e.main_acc}, {"main_loss", e.main_loss}};
  j["aux_accs"] = e.aux_accs;
  return j;
}

json config_json(const RunConfig& c, const DataSource& data, const ChannelStats& stats) {
  const TrainOptions& t = c.train;
  json j;
  j["model"] = {{"name", c.model.name},
                {"num_classes", c.model.num_classes},
                {"in_channels", c.model.in_channels},
                {"growth_rate", c.model.growth_rate},
                {"block_layers", c.model.block_layers},
                {"compression", c.model.compression},
                {"widths", c.model.widths},
                {"blocks_per_stage", c.model.blocks_per_stage},
                {"aux_after", c.model.aux_after},
                {"aux_hidden", c.model.aux_hidden},
                {"block", to_string(c.model.block)},
                {"batch_norm", c.model.batch_norm},
                {"aux_in_branch", c.model.aux_in_branch}};
  const InitPlan plan = run_init_plan(c);
  j["init"] = c.init;
  j["init_plan"] = {{"preset", plan.preset}, {"backbone", to_string(plan.backbone)}, {"aux", to_string(plan.aux)}};
  if (plan.backbone == BackbonePolicy::kLSUV) {
    j["init_plan"]["lsuv"] = {{"samples", c.lsuv.samples()},
                              {"target_variance", c.lsuv.target_variance()},
                              {"tolerance", c.lsuv.tolerance()},
                              {"max_iterations", c.lsuv.max_iterations()}};
  }
  if (plan.backbone == BackbonePolicy::kGradInit) {
    const auto& g = c.gradinit;
    j["init_plan"]["gradinit"] = {{"iterations", g.iterations()}, {"algorithm", g.algorithm()},
                                  {"eta", g.eta()},               {"gamma", std::isfinite(g.gamma()) ? json(g.gamma()) : json("inf")},
                                  {"lr", g.lr()},                 {"min_scale", g.min_scale()},
                                  {"grad_clip", g.grad_clip()},   {"batch_size", g.batch_size()}};
  }
  j["seed"] = c.seed;
  j["threads"] = torch::get_num_threads();
  j["data"] = {{"dataset", data.name},
               {"format", data.format},
               {"path", data.path},
               {"num_classes", data.num_classes()},
               {"shape", {data.channels(), data.height(), data.width()}},
               {"train_size", data.train.size()},
               {"root", data.root},
               {"eval_split", data.eval_split_name()},
               {"val_split", c.val_split},
               {"val_seed", c.val_split > 0 ? json(c.seed) : json(nullptr)},
               {"test_size", data.test.size()},
               {"eval_size", c.train.eval_limit() > 0 ? std::min(c.train.eval_limit(), data.eval_split().size())
                                                      : data.eval_split().size()},
               {"resize", c.resize},
               {"cache", data.cache_path},
               {"normalization_mean", stats.mean},
               {"normalization_std", stats.std}};
  if (data.name == "synthetic") {
    j["data"]["synthetic"] = {{"train_size", c.synthetic.train_size}, {"test_size", c.synthetic.test_size},
                              {"height", c.synthetic.height},         {"width", c.synthetic.width},
                              {"channels", c.synthetic.channels},     {"num_classes", c.synthetic.num_classes},
                              {"seed", c.synthetic.seed},             {"noise", c.synthetic.noise}};
  }
  j["train"] = {{"steps", t.steps()},
                {"batch_size", t.batch_size()},
                {"lr", t.lr()},
                {"betas", {t.beta1(), t.beta2()}},
                {"eps", t.eps()},
                {"weight_decay", t.weight_decay()},
                {"aux_weight", t.aux_weight()},
                {"aux_schedule", t.aux_warmup_steps() > 0 ? "linear:" + std::to_string(t.aux_warmup_steps()) : "constant"},
                {"optimizer", t.optimizer()},
                {"momentum", t.momentum()},
                {"no_decay_scalars", t.no_decay_scalars()},
                {"no_decay_zero_init", t.no_decay_zero_init()},
                {"scalar_lr_mult", t.scalar_lr_mult()},
                {"target_acc", t.target_acc()},
                {"target_window", t.target_window()},
                {"grad_every", t.grad_every()},
                {"eval_every", t.eval_every()},
                {"eval_batch_size", t.eval_batch_size()},
                {"eval_limit", t.eval_limit()},
                {"hflip", t.hflip()},
                {"crop_padding", t.crop_padding()},
                {"prefetch", t.prefetch()},
                {"channels_last", t.channels_last()},
                {"fused", t.fused()},
                {"bf16", t.bf16()},
                {"device", t.device()},
                {"resident", uses_resident_loop(t)},
                {"cuda_graph", torch::Device(t.device()).is_cuda() && t.cuda_graph()},
                {"sync_every", t.sync_every()},
                {"stop_at_target", t.stop_at_target()}};
  const int64_t world = t.communicator() ? t.communicator()->world_size() : 1;
  j["distributed"] = {{"world_size", world},
                      {"backend", world > 1 ? json("gloo") : json(nullptr)},
                      {"per_rank_batch_size", t.batch_size() / world},
                      {"sync_batch_norm", world > 1 && t.sync_batch_norm()},
                      {"bucket_bytes", t.bucket_bytes()}};
  j["versions"] = version_info();
  return j;
}

json summary_json(const RunResult& r, const std::string& status, const std::string& error) {
  const TrainSummary& s = r.summary;
  json j;
  j["status"] = status;
  if (!error.empty()) j["error"] = error;
  j["steps_run"] = s.steps_run;
  j["steps_to_target"] = s.steps_to_target ? json(*s.steps_to_target) : json(nullptr);
  j["converged"] = s.converged();
  j["final_train_window_acc"] = s.final_train_window_acc;
  if (status == "completed") {
    j["final_val"] = eval_json(s.final_eval);
    j["val_acc"] = s.final_eval.main_acc;
    if (s.final_test) {
      j["final_test"] = eval_json(*s.final_test);
      j["test_acc"] = s.final_test->main_acc;
    }
  } else {
    j["val_acc"] = nullptr;
  }
  j["wall_seconds"] = s.wall_seconds;
  j["train_seconds"] = s.train_seconds;
  j["eval_seconds"] = s.eval_seconds;
  j["world_size"] = s.world_size;
  j["resumed_from_step"] = s.resumed_from_step;
  j["checkpoint"] = s.checkpoint.empty() ? json(nullptr) : json(s.checkpoint);
  j["comm_seconds"] = s.comm_seconds;
  j["init_seconds"] = r.init_seconds;
  j["calibration_seconds"] = r.calibration_seconds;
  j["init_warnings"] = r.init_warnings;
  j["init_plan"] = {{"backbone", to_string(r.init_plan.backbone)}, {"aux", to_string(r.init_plan.aux)}};
  if (r.init_plan.backbone == BackbonePolicy::kLSUV) {
    j["init_cost"] = {{"method", "lsuv"}, {"seconds", r.init.lsuv.seconds}, {"layers", r.init.lsuv.layers.size()}};
  } else if (r.init_plan.backbone == BackbonePolicy::kGradInit) {
    j["init_cost"] = {{"method", "gradinit"},
                      {"seconds", r.init.gradinit.seconds},
                      {"iterations", r.init.gradinit.iterations},
                      {"objective_steps", r.init.gradinit.objective_steps},
                      {"constraint_steps", r.init.gradinit.constraint_steps}};
  }
  j["parameter_counts"] = r.parameter_counts;
  return j;
}

std::string read_summary_status(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const json j = json::parse(text.str(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("status") && j["status"].is_string() ? j["status"].get<std::string>() : "";
}

}  // namespace

LoadOptions data_load_options(const RunConfig& c) {
  LoadOptions o;
  o.synthetic = c.synthetic;
  if (!c.resize.empty()) o.resize = parse_image_size(c.resize, "--resize");
  o.use_cache = c.use_cache;
  o.threads = c.threads;
  o.progress = c.progress;
  return o;
}

InitPlan run_init_plan(const RunConfig& c) {
  InitPlan plan = resolve_init_plan(c.init, c.backbone_init, c.aux_init);
  plan.lsuv = c.lsuv;
  plan.gradinit = c.gradinit;
  // Calibration runs as fast as the run's training loop, and as --no-fused says.
  plan.gradinit.fused(c.train.fused()).channels_last(c.train.channels_last());
  return plan;
}

void set_threads(int threads) {
  TORCH_CHECK_VALUE(threads >= 0, "threads must be >= 0, got ", threads);
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
}

std::map<std::string, std::string> version_info() {
  return {{"liondg", LIONDG_VERSION}, {"git_revision", LIONDG_GIT_REVISION}, {"libtorch", TORCH_VERSION}};
}

RunResult run_experiment(const RunConfig& c_in) {
  RunConfig c = c_in;
  const auto start = std::chrono::steady_clock::now();
  const InitPlan plan = run_init_plan(c);  // rejects unknown policies before any work
  set_threads(c.threads);

  // Data parallel: every rank trains, rank 0 alone writes the run directory.
  const Communicator* comm = c.train.communicator().get();
  const bool writer = comm == nullptr || comm->rank() == 0;
  // Output directory first: never train for an hour and then fail to write.
  const std::string summary_path = c.out_dir + "/summary.json";
  const std::string checkpoint_path = c.out_dir + "/checkpoint.pt";
  int64_t resume_step = 0;
  if (c.resume) {
    if (!is_regular_file(checkpoint_path)) {
      throw UsageError("--resume: '" + c.out_dir + "' holds no checkpoint (checkpoint.pt); runs write one every "
                       "--checkpoint-every steps and when interrupted");
    }
    if (is_regular_file(summary_path) &&
        read_summary_status(summary_path) == "completed") {
      throw UsageError("--resume: the run in '" + c.out_dir + "' has already completed");
    }
    resume_step = checkpoint_step(checkpoint_path);
    c.train.resume_from(checkpoint_path);
  }
  c.train.checkpoint_path(checkpoint_path).checkpoint_every(c.checkpoint_every);
  if (writer) {
    ensure_writable_dir(c.out_dir);
    if (!c.overwrite && !c.resume && is_regular_file(summary_path)) {
      throw UsageError("output directory '" + c.out_dir +
                       "' already holds a finished run (summary.json); choose another --out or pass --overwrite");
    }
  }

  DataSource data = load_dataset(c.dataset, c.data_path, data_load_options(c));
  hold_out_validation(data, c.val_split, /*seed=*/c.seed);
  c.model.num_classes = data.num_classes();
  c.model.in_channels = data.channels();
  c.model.block = plan.required_block();
  c.train.seed(c.seed);
  const ChannelStats stats = channel_stats(data.train.images);

  torch::manual_seed(c.seed);
  std::shared_ptr<DSModelImpl> model = make_model(c.model);
  CalibrationSampler calibration(data.train, stats, /*seed=*/c.seed ^ 0x9E3779B97F4A7C15ull);
  const InitResult init =
      apply_init_plan_(*model, plan, [&](int64_t n) { return calibration.next(n); }, c.train.aux_weight());
  RunResult result;
  result.init_seconds = init.seconds;
  result.calibration_seconds = init.calibration_seconds;
  result.init_warnings = init.warnings;
  result.init = init;
  result.init_plan = plan;
  result.parameter_counts = parameter_counts(*model);
  result.out_dir = c.out_dir;

  if (writer) {
    write_file_atomic(c.out_dir + "/config.json", config_json(c, data, stats).dump(2) + "\n");
    write_file_atomic(c.out_dir + "/init.json", init.audit_json + "\n");
  }

  StepCounter counter;
  counter.steps = resume_step;
  try {
    std::unique_ptr<CsvMetricsWriter> csv;
    std::vector<RecordSink*> sinks{&counter};
    if (writer) {
      if (c.resume) truncate_metrics(c.out_dir + "/metrics.csv", resume_step);
      csv = std::make_unique<CsvMetricsWriter>(c.out_dir + "/metrics.csv", model->num_aux_heads(), c.resume);
      sinks.push_back(csv.get());
    }
    std::unique_ptr<ProgressPrinter> progress;
    if (c.progress != nullptr && writer) {
      progress = std::make_unique<ProgressPrinter>(c.progress, c.train.steps(), c.progress_interactive);
      sinks.push_back(progress.get());
    }
    result.summary = train(*model, data, c.train, sinks);
    if (csv) csv->flush_pending();
    if (progress) progress->finish();
  } catch (const std::exception& e) {
    result.summary.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    result.summary.steps_run = counter.steps;
    try {
      const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
      const std::string message = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
      if (writer) write_file_atomic(summary_path, summary_json(result, "failed", message).dump(2) + "\n");
    } catch (...) {
      // Keep the original error.
    }
    throw;
  }

  if (!writer) return result;
  if (c.save_model && result.summary.status == "completed") {
    const std::string tmp = c.out_dir + "/model.pt.tmp";
    torch::save(model, tmp);
    rename_file(tmp, c.out_dir + "/model.pt");
  }
  write_file_atomic(summary_path, summary_json(result, result.summary.status, result.summary.diverged_reason).dump(2) + "\n");
  return result;
}

}  // namespace liondg
