// `liondg train`: one training run with the paper's protocol.

#include "cli/commands.h"

#include <liondg/data/dataset.h>
#include <liondg/experiment/run.h>
#include <liondg/init/plan.h>
#include <liondg/models/densenet_ds.h>
#include <liondg/train/distributed.h>
#include <liondg/train/progress.h>

#include <nlohmann/json.hpp>

#include <iostream>
#include <thread>

namespace liondg::cli {

CLI::Validator seed_validator() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        const bool digits = !v.empty() && v.size() <= 20 && v.find_first_not_of("0123456789") == std::string::npos;
        if (digits) {
          try {
            std::stoull(v);
            return "";
          } catch (const std::out_of_range&) {
          }
        }
        return "expected an integer in [0, 18446744073709551615], got '" + v + "'";
      },
      "SEED");
}

CLI::Validator device_validator() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        if (v == "cpu" || v == "cuda") return "";
        if (v.rfind("cuda:", 0) == 0 && v.size() > 5 && v.size() <= 8 &&
            v.find_first_not_of("0123456789", 5) == std::string::npos) {
          return "";
        }
        return "expected cpu, cuda or cuda:N, got '" + v + "'";
      },
      "DEVICE");
}

void add_model_options(CLI::App& cmd, ModelSpec& spec) {
  cmd.add_option("--model", spec.name, "Model architecture")
      ->check(CLI::IsMember(model_names()))
      ->capture_default_str();
  cmd.add_option("--growth-rate", spec.growth_rate, "DenseNet-DS growth rate")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--block-layers", spec.block_layers, "DenseNet-DS layers per dense block, e.g. 6,6,6")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--compression", spec.compression, "DenseNet-DS transition compression in (0, 1]")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  cmd.add_option("--widths", spec.widths, "ResNet-DS stage widths, e.g. 16,32,64")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--blocks-per-stage", spec.blocks_per_stage, "ResNet-DS basic blocks per stage, e.g. 3,3,3")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--aux-after", spec.aux_after,
                 "1-based blocks (DenseNet-DS) or stages (ResNet-DS) whose output an auxiliary head reads")
      ->delimiter(',')
      ->capture_default_str();
  cmd.add_option("--aux-hidden", spec.aux_hidden, "Hidden width of auxiliary heads (0 = GAP + linear)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

void add_init_options(CLI::App& cmd, std::string& preset, std::string& backbone, std::string& aux) {
  cmd.add_option("--init", preset,
                 "Init preset: he, xavier, lion-dg (he+zero), lsuv, lion-lsuv (lsuv+zero), fixup, rezero, gradinit")
      ->check(CLI::IsMember(init_preset_names()))
      ->capture_default_str();
  cmd.add_option("--backbone-init", backbone, "Override the preset's backbone policy")
      ->check(CLI::IsMember(backbone_policy_names()));
  cmd.add_option("--aux-init", aux, "Override the preset's auxiliary-head policy")
      ->check(CLI::IsMember(aux_policy_names()));
}

void add_data_options(CLI::App& cmd, std::string& dataset, std::string& path, SyntheticOptions& syn) {
  cmd.add_option("--dataset", dataset, "Data set")->check(CLI::IsMember(dataset_names()))->capture_default_str();
  cmd.add_option("--data", path,
                 "Directory or archive (.tar, .tar.gz, .zip) holding the data set in any supported layout: IDX, "
                 "CIFAR binary or python, or an image folder ROOT/{train,test}/<class>/*.jpg|png (default: the data "
                 "set's standard location; fashion-mnist: /usr/share/datasets/fashion-mnist)");
  cmd.add_option("--synthetic-train-size", syn.train_size, "Synthetic data: training images")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--synthetic-test-size", syn.test_size, "Synthetic data: test images")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd.add_option("--synthetic-image-size", syn.height, "Synthetic data: image height = width")
      ->check(CLI::Range(int64_t{4}, int64_t{1024}))
      ->capture_default_str();
  cmd.add_option("--synthetic-channels", syn.channels, "Synthetic data: channels")
      ->check(CLI::Range(int64_t{1}, int64_t{64}))
      ->capture_default_str();
  cmd.add_option("--synthetic-classes", syn.num_classes, "Synthetic data: classes")
      ->check(CLI::Range(int64_t{2}, int64_t{1000}))
      ->capture_default_str();
}

void add_train_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("train", "Train one deeply-supervised model with the paper's protocol");
  auto config = std::make_shared<RunConfig>();
  auto opts = std::make_shared<TrainOptions>();
  auto flags = std::make_shared<std::tuple<bool, bool, bool, bool>>();  // no_hflip, quiet, json, no_save

  add_model_options(*cmd, config->model);
  add_init_options(*cmd, config->init, config->backbone_init, config->aux_init);
  cmd->add_option("--lsuv-samples", config->lsuv.samples(), "LSUV calibration images")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--lsuv-tolerance", config->lsuv.tolerance(), "LSUV |Var - 1| tolerance")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--lsuv-max-iter", config->lsuv.max_iterations(), "LSUV rescalings per layer at most")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--gradinit-iters", config->gradinit.iterations(), "GradInit iterations")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--gradinit-alg", config->gradinit.algorithm(), "GradInit simulated optimizer")
      ->check(CLI::IsMember({"adam", "sgd"}))
      ->capture_default_str();
  cmd->add_option("--gradinit-eta", config->gradinit.eta(), "GradInit step size eta")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--gradinit-gamma", config->gradinit.gamma(), "GradInit gradient-norm bound (default: inf)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--gradinit-lr", config->gradinit.lr(), "Learning rate of the GradInit scales")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--gradinit-min-scale", config->gradinit.min_scale(), "Lower bound of the weight scales")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--gradinit-grad-clip", config->gradinit.grad_clip(), "Per-scale gradient clip (0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--gradinit-batch-size", config->gradinit.batch_size(), "GradInit examples per iteration")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_flag("--no-batch-norm", [config](int64_t) { config->model.batch_norm = false; },
                "Build the model without BatchNorm (Fixup's normalization-free variant)");
  add_data_options(*cmd, config->dataset, config->data_path, config->synthetic);
  cmd->add_option("--steps", opts->steps(), "Training steps")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--batch-size", opts->batch_size(), "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--seed", config->seed, "Seed of model initialization and data order")
      ->check(seed_validator())
      ->capture_default_str();
  cmd->add_option("--lr", opts->lr(), "AdamW learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--beta1", opts->beta1(), "AdamW beta1")->check(CLI::Range(0.0, 0.999999))->capture_default_str();
  cmd->add_option("--beta2", opts->beta2(), "AdamW beta2")->check(CLI::Range(0.0, 0.999999999))->capture_default_str();
  cmd->add_option("--weight-decay", opts->weight_decay(), "AdamW decoupled weight decay")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--aux-weight", opts->aux_weight(), "alpha in L = L_main + alpha * sum L_aux")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  auto schedule = std::make_shared<std::string>("constant");
  cmd->add_option("--aux-schedule", *schedule, "Auxiliary-weight schedule: constant, or linear:T (alpha * min(1, t/T))")
      ->check([](const std::string& v) -> std::string {
        if (v == "constant") return "";
        if (v.rfind("linear:", 0) == 0) {
          try {
            size_t used = 0;
            const long long t = std::stoll(v.substr(7), &used);
            if (t > 0 && used == v.size() - 7) return "";
          } catch (const std::exception&) {
          }
        }
        return "expected 'constant' or 'linear:T' with an integer T > 0, got '" + v + "'";
      })
      ->capture_default_str();
  cmd->add_option("--optimizer", opts->optimizer(), "Optimizer")
      ->check(CLI::IsMember({"adamw", "sgd"}))
      ->capture_default_str();
  cmd->add_option("--momentum", opts->momentum(), "SGD momentum")->check(CLI::Range(0.0, 0.999999))->capture_default_str();
  cmd->add_flag("--no-decay-scalars", opts->no_decay_scalars(), "No weight decay on one-element parameters");
  cmd->add_flag("--no-decay-zero-init", opts->no_decay_zero_init(), "No weight decay on parameters that start at zero");
  cmd->add_option("--scalar-lr-mult", opts->scalar_lr_mult(), "Learning-rate multiplier of one-element parameters")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--target-acc", opts->target_acc(), "Training-accuracy target for steps-to-target")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--target-window", opts->target_window(), "Batches averaged for the target accuracy")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--grad-every", opts->grad_every(), "Gradient diagnostics every K steps (0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--eval-every", opts->eval_every(), "Validation every E steps (0 = only at the end)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--eval-limit", opts->eval_limit(), "Validate on the first N images of the evaluation split (0 = all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--eval-batch-size", opts->eval_batch_size(), "Batch size of validation")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--no-hflip", std::get<0>(*flags), "Disable random horizontal flips");
  cmd->add_option("--crop-padding", opts->crop_padding(),
                  "Random crop from the image zero-padded by P pixels (0 = off, the paper's protocol; 4 is standard)")
      ->check(CLI::Range(int64_t{0}, int64_t{64}))
      ->capture_default_str();
  cmd->add_flag("--no-prefetch", [opts](int64_t) { opts->prefetch(false); },
                "Prepare batches on the training thread (the same batches; for timing comparisons)");
  cmd->add_flag("--no-fused", [opts](int64_t) { opts->fused(false); },
                "The layer-by-layer path instead of the fused nodes (DenseNet-DS's fused blocks, ResNet-DS's fused "
                "BatchNorm+ReLU and folded BatchNorm), in training and evaluation (equal within float rounding; "
                "slower)");
  cmd->add_option("--device", opts->device(),
                  "cpu, cuda or cuda:N: on a GPU the training split, augmentation, step and records stay on the "
                  "device and the step is replayed as a CUDA graph (docs/gpu.md)")
      ->check(device_validator())
      ->capture_default_str();
  cmd->add_flag("--resident", opts->resident(),
                "The device-resident loop on the CPU too (flat optimizer, records read every --sync-every steps)");
  cmd->add_flag("--no-cuda-graph", [opts](int64_t) { opts->cuda_graph(false); },
                "On a GPU: launch the step's kernels one by one instead of replaying a CUDA graph");
  cmd->add_option("--sync-every", opts->sync_every(),
                  "Resident loop: read step records back every N steps (and at validation, checkpoints, the end)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--bf16", opts->bf16(),
                "Reduced precision, off by default: the fused DenseNet-DS blocks' 3x3 convolutions on bfloat16 "
                "operands (float accumulation; everything else float32). CPU only; faster with AVX512_BF16; results "
                "differ from float32 by bfloat16 rounding (bench/README.md)");
  cmd->add_flag("--no-channels-last", [opts](int64_t) { opts->channels_last(false); },
                "NCHW activations instead of channels-last (equal within float rounding; slower on oneDNN CPUs)");
  cmd->add_option("--val-split", config->val_split,
                  "Hold out N training images (stratified, seeded by --seed) and validate on them instead of the "
                  "test split; the test split is then evaluated once at the end")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--resize", config->resize, "Resize image-folder images to HxW (else differing sizes are an error)");
  cmd->add_flag("--no-cache", [config](int64_t) { config->use_cache = false; },
                "Do not read or write the decoded-data cache ($LIONDG_CACHE_DIR, else $XDG_CACHE_HOME/liondg)");
  cmd->add_flag("--stop-at-target", opts->stop_at_target(), "Stop as soon as the target accuracy is reached");
  cmd->add_option("--out", config->out_dir, "Run directory (default: runs/<model>-<init>-<dataset>-s<seed>)");
  cmd->add_flag("--overwrite", config->overwrite, "Allow an --out directory that holds a finished run");
  cmd->add_option("--checkpoint-every", config->checkpoint_every,
                  "Write OUT/checkpoint.pt (model, optimizer, data order, RNG, metric state) every N steps; one is "
                  "also written when SIGINT/SIGTERM stops the run (0 = only then)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--resume", config->resume,
                "Continue the unfinished run in --out from its checkpoint.pt (same options and seed); the metrics "
                "equal those of an uninterrupted run")
      ->excludes("--overwrite");
  cmd->add_option("--threads", config->threads, "Intra-op CPU threads (0 = all cores)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  auto dist = std::make_shared<CommunicatorOptions>();
  auto dist_timeout = std::make_shared<double>(300.0);
  auto bucket_kib = std::make_shared<int64_t>(256);
  cmd->add_flag("--sync-bn", opts->sync_batch_norm(),
                "Data parallel: BatchNorm statistics over all ranks' batches (default: per rank, as DDP)");
  cmd->add_option("--dist-backend", dist->backend(), "Data parallel: c10d backend")
      ->check(CLI::IsMember({"gloo", "nccl"}))
      ->capture_default_str();
  cmd->add_option("--dist-timeout", *dist_timeout,
                  "Data parallel: seconds to wait for the other ranks (joining and every collective)")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();
  cmd->add_option("--bucket-kb", *bucket_kib, "Data parallel: gradient all-reduce bucket size in KiB")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_flag("--quiet", std::get<1>(*flags), "No progress output");
  cmd->add_flag("--json", std::get<2>(*flags), "Print summary.json to stdout at the end");
  cmd->add_flag("--no-save-model", std::get<3>(*flags), "Do not write model.pt");
  config->out_dir.clear();

  cmd->callback([config, opts, flags, schedule, dist, dist_timeout, bucket_kib, &status]() {
    RunConfig c = *config;
    const auto [no_hflip, quiet, as_json, no_save] = *flags;
    c.train = *opts;
    c.train.bucket_bytes(*bucket_kib * 1024);
    // Data parallel when started with torchrun-style variables (liondg launch sets them).
    const DistributedEnv env = DistributedEnv::from_environment();
    bool writer = true;
    if (env.enabled()) {
      if (c.threads == 0) {  // share the cores among this machine's ranks
        const auto cores = static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
        c.threads = static_cast<int>(std::max<int64_t>(1, cores / env.local_world_size));
      }
      CommunicatorOptions co = *dist;
      co.timeout(std::chrono::milliseconds(static_cast<int64_t>(*dist_timeout * 1000.0)));
      c.train.communicator(connect(env, co));
      writer = env.rank == 0;
    } else if (c.train.sync_batch_norm()) {
      std::cerr << "note: --sync-bn has no effect in a single process\n";
    }
    if (c.train.bf16() && !cpu_has_native_bf16()) {
      std::cerr << "note: --bf16: this CPU has no AVX512_BF16 (or this build cannot tell), so bfloat16 "
                   "convolutions may be emulated and slower than float32\n";
    }
    c.train.aux_warmup_steps(*schedule == "constant" ? 0 : std::stoll(schedule->substr(7)));
    c.train.hflip(!no_hflip);
    c.save_model = !no_save;
    c.synthetic.width = c.synthetic.height;
    if (c.out_dir.empty()) {
      c.out_dir = "runs/" + c.model.name + "-" + c.init + "-" + c.dataset + "-s" + std::to_string(c.seed);
    }
    if (!quiet && writer) {
      c.progress = stderr;
      c.progress_interactive = ProgressPrinter::is_terminal(stderr);
    }
    const RunResult r = run_experiment(c);
    const TrainSummary& s = r.summary;
    if (!writer) {
      if (s.status == "diverged") status = kExitDiverged;
      if (s.status == "interrupted") status = kExitInterrupted;
      return;
    }
    if (as_json) {
      std::ifstream in(r.out_dir + "/summary.json");
      std::cout << in.rdbuf();
    } else {
      std::cout << "run directory: " << r.out_dir << "\n"
                << "status: " << s.status << (s.diverged_reason.empty() ? "" : " (" + s.diverged_reason + ")") << "\n"
                << "parameters: " << r.parameter_counts.at("total") << " (backbone "
                << r.parameter_counts.at("backbone") << ", main head " << r.parameter_counts.at("main_head")
                << ", aux heads " << r.parameter_counts.at("aux_heads") << ")\n"
                << "steps to target: "
                << (s.steps_to_target ? std::to_string(*s.steps_to_target) : std::string("not reached")) << "\n";
      if (s.status == "completed") {
        std::cout << "final val acc: " << s.final_eval.main_acc << " (main)";
        for (size_t k = 0; k < s.final_eval.aux_accs.size(); ++k) {
          std::cout << ", " << s.final_eval.aux_accs[k] << " (aux " << k << ")";
        }
        std::cout << "\n";
        if (s.final_test) std::cout << "final test acc: " << s.final_test->main_acc << " (main)\n";
      }
      std::cout << "wall time: " << s.wall_seconds << " s (init " << r.init_seconds << " s, of which calibration "
                << r.calibration_seconds << " s)\n";
      for (const auto& w : r.init_warnings) std::cout << "init warning: " << w << "\n";
    }
    if (s.status == "diverged") {
      std::cerr << "error: run diverged: " << s.diverged_reason << "; results so far are in " << r.out_dir << "\n";
      status = kExitDiverged;
    } else if (s.status == "interrupted") {
      std::cerr << "interrupted after step " << s.steps_run << "; checkpoint " << r.out_dir
                << "/checkpoint.pt; continue with the same command plus --resume\n";
      status = kExitInterrupted;
    }
  });
}

}  // namespace liondg::cli
