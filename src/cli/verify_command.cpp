// `liondg verify decoupling`: Proposition 1 on a real batch at initialization.

#include "cli/commands.h"

#include <liondg/experiment/decoupling.h>
#include <liondg/experiment/run.h>
#include <liondg/init/plan.h>

#include <nlohmann/json.hpp>

#include <iostream>

namespace liondg::cli {

void add_verify_command(CLI::App& app, int& status) {
  auto* verify = app.add_subcommand("verify", "Measure the paper's theoretical claims");
  verify->require_subcommand(1);
  auto* cmd = verify->add_subcommand(
      "decoupling",
      "Proposition 1: max |gradient| of alpha * sum L_aux over backbone and auxiliary-head parameters at init");
  auto config = std::make_shared<DecouplingConfig>();
  auto as_json = std::make_shared<bool>(false);
  auto threads = std::make_shared<int>(0);
  add_model_options(*cmd, config->model);
  add_init_options(*cmd, config->init, config->backbone_init, config->aux_init);
  add_data_options(*cmd, config->dataset, config->data_path, config->synthetic);
  cmd->add_option("--batch-size", config->batch_size, "Batch size")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--aux-weight", config->aux_weight, "alpha")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--seed", config->seed, "Seed of the initialization")->check(seed_validator())->capture_default_str();
  cmd->add_option("--threads", *threads, "Intra-op CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", *as_json, "Print a JSON object instead of the verdict line");
  add_verify_theory_commands(*verify, status);

  cmd->callback([config, as_json, threads, &status]() {
    set_threads(*threads);
    DecouplingConfig c = *config;
    c.synthetic.width = c.synthetic.height;
    const DecouplingResult r = verify_decoupling(c);
    // The auxiliary policy `zero` (lion-dg, lion-lsuv) zeroes the auxiliary logits
    // layers, so decoupling is expected exactly for it; every other plan couples.
    const bool expected = r.aux_policy == AuxPolicy::kZero;
    if (*as_json) {
      nlohmann::json j{{"model", r.model},
                       {"init", r.init},
                       {"backbone_max_abs_grad", r.backbone_max_abs_grad},
                       {"aux_head_max_abs_grad", r.aux_head_max_abs_grad},
                       {"decoupled", r.decoupled()}};
      std::cout << j.dump() << "\n";
    } else {
      std::cout << r.model << " + " << r.init << ": backbone max|grad(alpha*sum L_aux)| = " << r.backbone_max_abs_grad
                << ", aux-head max|grad| = " << r.aux_head_max_abs_grad << " -> "
                << (r.decoupled() ? "DECOUPLED (backbone gradient exactly zero)" : "COUPLED")
                << (r.decoupled() == expected ? " as expected" : " -- UNEXPECTED for this policy") << "\n";
    }
    status = r.decoupled() == expected ? kExitOk : kExitRuntime;
  });
}

}  // namespace liondg::cli
