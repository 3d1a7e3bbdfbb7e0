// liondg: command-line tool for LION-DG experiments.
//
//   liondg train  --model densenet-ds --init lion-dg --dataset fashion-mnist ...
//   liondg verify decoupling --model resnet-ds --init lion-dg
//   liondg describe --model densenet-ds --num-classes 100
//   liondg grid --preset quick        liondg report DIR
//   liondg data info cifar10-jpeg.tar.gz   liondg data fetch cifar10
//   liondg launch --nproc 2 -- train ...   (data-parallel ranks, like torchrun)
//
// Exit codes: 0 success, 1 runtime error (data, I/O), 2 usage error, 3 diverged run,
// 130 interrupted (SIGINT / SIGTERM: the run stopped at a step boundary with a checkpoint).

#include "cli/commands.h"

#include <liondg/errors.h>
#include <liondg/experiment/run.h>
#include <liondg/train/trainer.h>
#include <liondg/util/memory.h>

#include <c10/util/Exception.h>

#include <csignal>
#include <iostream>

namespace {
// First SIGINT / SIGTERM: stop at the next step boundary (checkpoint, summary
// "interrupted"); a second one: the default action, immediately.
extern "C" void on_stop_signal(int sig) {
  liondg::request_stop();
  std::signal(sig, SIG_DFL);
}
}  // namespace

int main(int argc, char** argv) {
  using namespace liondg::cli;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  // Reuse freed activation memory instead of mapping it anew every step.
  liondg::configure_cpu_allocator();
  CLI::App app{"liondg: layer-informed initialization for deeply-supervised networks (LION-DG)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("liondg ") + liondg::version_info().at("liondg"));
  int status = kExitOk;
  add_train_command(app, status);
  add_verify_command(app, status);
  add_describe_command(app, status);
  add_grid_commands(app, status);
  add_data_commands(app, status);
  add_bench_commands(app, status);
  add_launch_command(app, status);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message and a --help hint
    return kExitUsage;
  } catch (const liondg::UsageError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const c10::ValueError& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return kExitUsage;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitRuntime;
  }
  return status;
}
