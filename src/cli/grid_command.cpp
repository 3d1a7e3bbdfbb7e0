// `liondg grid`, `liondg grid-worker` (internal) and `liondg report`.

#include "cli/commands.h"

#include <liondg/errors.h>
#include <liondg/experiment/grid.h>
#include <liondg/report/report.h>
#include <liondg/train/trainer.h>

#include <iostream>

namespace liondg::cli {

void add_grid_commands(CLI::App& app, int& status) {
  {
    auto* cmd = app.add_subcommand("grid", "Run a comparison grid (datasets x models x inits x seeds) and write its report");
    struct Args {
      std::string preset, config, out, shard = "1/1";
      std::vector<std::string> data;
      int jobs = 1;
      std::string device = "cpu";
      bool dry_run = false, quiet = false, no_report = false, no_estimate = false;
    };
    auto a = std::make_shared<Args>();
    auto* preset = cmd->add_option("--preset", a->preset, "Built-in grid: paper, quick (about 5 minutes on 2 cores), smoke")
                       ->check(CLI::IsMember(grid_preset_names()));
    auto* config = cmd->add_option("--config", a->config, "Grid specification file (TOML)");
    preset->excludes(config);
    cmd->add_option("--data", a->data, "Data location per data set, DATASET=PATH (repeatable)");
    cmd->add_option("--out", a->out, "Grid directory (default: grids/<name>)");
    cmd->add_option("--jobs", a->jobs, "Parallel worker processes (each gets cores/jobs threads)")
        ->check(CLI::Range(1, 256))
        ->capture_default_str();
    cmd->add_option("--device", a->device,
                    "Where cells train: cpu, cuda or cuda:N (with --jobs N, N runs share the GPU concurrently)")
        ->check(device_validator())
        ->capture_default_str();
    cmd->add_option("--shard", a->shard, "Run shard I of N (1-based), e.g. 3/8")->capture_default_str();
    cmd->add_flag("--dry-run", a->dry_run, "List the cells and a measured time estimate; run nothing");
    cmd->add_flag("--no-estimate", a->no_estimate, "With --dry-run: list the cells without timing probes");
    cmd->add_flag("--quiet", a->quiet, "Only the final summary");
    cmd->add_flag("--no-report", a->no_report, "Do not write the report at the end");

    // `liondg grid merge DIR... --out OUT`: shards from several machines into one grid.
    struct MergeArgs {
      std::vector<std::string> dirs;
      std::string out;
      bool no_report = false;
    };
    auto m = std::make_shared<MergeArgs>();
    auto* merge = cmd->add_subcommand("merge", "Merge grid directories of one grid (e.g. shards) into one, with its report");
    merge->add_option("dirs", m->dirs, "Grid directories to merge")->required();
    merge->add_option("--out", m->out, "New grid directory for the merged results")->required();
    merge->add_flag("--no-report", m->no_report, "Do not write the report");
    merge->callback([m, &status]() {
      const MergeSummary s = merge_grids(m->dirs, m->out);
      std::cout << "merged " << m->dirs.size() << " director" << (m->dirs.size() == 1 ? "y" : "ies") << " into "
                << m->out << ": " << s.cells << " cells, " << s.finished << " finished, " << s.failed << " failed, "
                << s.missing << " missing, " << s.duplicates << " finished in more than one input (first kept)\n";
      if (!m->no_report && s.finished > 0) {
        const ReportResult r = write_report(m->out);
        std::cout << "\n" << r.table1_markdown << "\nreport: " << r.markdown_path << " and " << r.html_path << "\n";
      }
      status = s.failed + s.missing > 0 ? kExitRuntime : kExitOk;
      if (status != kExitOk) {
        std::cerr << "error: the merged grid is incomplete (" << s.failed << " failed, " << s.missing
                  << " missing cells); run the missing shards and merge again\n";
      }
    });

    cmd->callback([a, merge, &status]() {
      if (merge->parsed()) return;  // `grid merge` ran instead
      if (a->preset.empty() && a->config.empty()) throw UsageError("grid needs --preset NAME or --config FILE");
      GridSpec spec = a->preset.empty() ? grid_from_toml_file(a->config) : grid_preset(a->preset);
      for (const auto& d : a->data) {
        const size_t eq = d.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == d.size()) {
          throw UsageError("--data expects DATASET=PATH, got '" + d + "'");
        }
        set_grid_data_path(spec, d.substr(0, eq), d.substr(eq + 1));
      }
      GridOptions o;
      o.out_dir = a->out.empty() ? "grids/" + spec.name : a->out;
      o.jobs = a->jobs;
      o.device = a->device;
      std::tie(o.shard_index, o.shard_count) = parse_shard(a->shard);
      o.dry_run = a->dry_run;
      o.estimate = !a->no_estimate;
      o.quiet = a->quiet;
      const int64_t failed = run_grid(spec, o);
      if (o.dry_run) return;
      if (stop_requested()) {
        std::cerr << "grid interrupted: finished cells are in " << o.out_dir
                  << "/results.jsonl; run the same command again to continue\n";
        status = kExitInterrupted;
        return;
      }
      if (!a->no_report) {
        const ReportResult r = write_report(o.out_dir);
        std::cout << "\n" << r.table1_markdown << "\nreport: " << r.markdown_path << " and " << r.html_path << "\n";
        for (const auto& n : r.notes) std::cout << "note: " << n << "\n";
      }
      if (failed > 0) {
        std::cerr << "error: " << failed << " cell(s) failed; see " << o.out_dir << "/results.jsonl and logs/\n";
        status = kExitRuntime;
      }
    });
  }
  {
    auto* cmd = app.add_subcommand("grid-worker", "Internal: run one cell of a grid directory");
    cmd->group("");  // hidden from --help
    auto dir = std::make_shared<std::string>();
    auto key = std::make_shared<std::string>();
    auto threads = std::make_shared<int>(0);
    auto device = std::make_shared<std::string>("cpu");
    cmd->add_option("dir", *dir, "Grid directory")->required();
    cmd->add_option("key", *key, "Cell key")->required();
    cmd->add_option("--threads", *threads, "Threads")->check(CLI::NonNegativeNumber);
    cmd->add_option("--device", *device, "Device");
    cmd->callback([dir, key, threads, device, &status]() {
      const CellResult r = run_grid_cell(*dir, *key, *threads, *device);
      std::cout << r.key << ": " << r.status << "\n";
      status = r.status == "completed" ? kExitOk : kExitDiverged;
    });
  }
  {
    auto* cmd = app.add_subcommand("report", "Write the tables, figures and report of a grid directory");
    auto dir = std::make_shared<std::string>();
    cmd->add_option("dir", *dir, "Grid directory (holds results.jsonl)")->required();
    cmd->callback([dir, &status]() {
      const ReportResult r = write_report(*dir);
      std::cout << r.table1_markdown << "\nreport: " << r.markdown_path << " and " << r.html_path << "\n";
      for (const auto& n : r.notes) std::cout << "note: " << n << "\n";
      status = kExitOk;
    });
  }
}

}  // namespace liondg::cli
