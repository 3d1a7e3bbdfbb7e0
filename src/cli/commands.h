#pragma once
// Subcommands of the liondg tool. Each `add_*` registers a subcommand whose
// callback runs it and stores its exit status in `status`; errors are thrown
// and mapped to exit codes by main (2 usage, 1 runtime, 3 diverged, 130 interrupted).

#include <liondg/data/dataset.h>
#include <liondg/models/registry.h>

#include <CLI/CLI.hpp>

namespace liondg::cli {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
constexpr int kExitDiverged = 3;
constexpr int kExitInterrupted = 130;  // SIGINT / SIGTERM: stopped at a step boundary, checkpoint written

void add_train_command(CLI::App& app, int& status);
void add_verify_command(CLI::App& app, int& status);
void add_describe_command(CLI::App& app, int& status);
void add_verify_theory_commands(CLI::App& verify, int& status);
void add_grid_commands(CLI::App& app, int& status);
void add_data_commands(CLI::App& app, int& status);
void add_bench_commands(CLI::App& app, int& status);
void add_launch_command(CLI::App& app, int& status);

/// A validator for seeds: a decimal integer in [0, 2^64 - 1]. (CLI11 alone would wrap
/// "-1" to 2^64 - 1 and saturate larger values.)
CLI::Validator seed_validator();

/// A validator for --device: "cpu", "cuda" or "cuda:N".
CLI::Validator device_validator();

/// Registers the model-shape options shared by every command that builds a model.
void add_model_options(CLI::App& cmd, ModelSpec& spec);

/// Registers --init (a preset), --backbone-init and --aux-init.
void add_init_options(CLI::App& cmd, std::string& preset, std::string& backbone, std::string& aux);

/// Registers --dataset, --data and the synthetic data set's options.
void add_data_options(CLI::App& cmd, std::string& dataset, std::string& path, SyntheticOptions& synthetic);

}  // namespace liondg::cli
