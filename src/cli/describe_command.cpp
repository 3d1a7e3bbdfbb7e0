// `liondg describe`: a model's tap points and parameter counts per role.

#include "cli/commands.h"

#include <iostream>

namespace liondg::cli {

void add_describe_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("describe", "Print a model's auxiliary taps and parameter counts per role");
  auto spec = std::make_shared<ModelSpec>();
  add_model_options(*cmd, *spec);
  cmd->add_option("--num-classes", spec->num_classes, "Number of classes")
      ->check(CLI::Range(int64_t{2}, int64_t{100000}))
      ->capture_default_str();
  cmd->add_option("--in-channels", spec->in_channels, "Input channels")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}))
      ->capture_default_str();
  cmd->callback([spec, &status]() {
    std::shared_ptr<DSModelImpl> model = make_model(*spec);
    std::cout << spec->name << " (" << spec->in_channels << " input channels, " << spec->num_classes
              << " classes)\n";
    const auto taps = model->aux_taps();
    for (size_t k = 0; k < taps.size(); ++k) {
      std::cout << "  aux_head_" << k << " reads tap '" << taps[k] << "' ("
                << model->aux_head(static_cast<int64_t>(k))->options.in_channels() << " channels)\n";
    }
    for (const auto& [role, count] : parameter_counts(*model)) std::cout << "  " << role << ": " << count << "\n";
    status = kExitOk;
  });
}

}  // namespace liondg::cli
