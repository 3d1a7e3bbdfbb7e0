#pragma once
// Propositions 2 and Theorem 1, measured (`liondg verify growth|architecture`).

#include <liondg/data/dataset.h>
#include <liondg/models/registry.h>

#include <string>
#include <vector>

namespace liondg {

/// Least-squares line y = intercept + slope * x with its coefficient of determination.
struct LineFit {
  double slope = 0, intercept = 0, r2 = 0;
};
LineFit fit_line(const std::vector<double>& x, const std::vector<double>& y);

struct TheoryConfig {
  ModelSpec model;
  std::string dataset = "fashion-mnist";
  std::string data_path;
  SyntheticOptions synthetic;
  int64_t steps = 200;
  int64_t fit_steps = 20;   // growth: steps the line is fitted over
  int64_t batch_size = 128;
  double aux_weight = 0.3;
  double adamw_lr = 1e-3;
  double sgd_lr = 0.05;
  uint64_t seed = 42;
};

struct GrowthSeries {
  std::string optimizer;  // "sgd" | "adamw"
  double lr = 0;
  std::vector<std::vector<double>> head_norms;  // [head][step-1]: ||W_aux_k|| before update `step`
  std::vector<double> grad_ratio;               // aux/main backbone-gradient ratio per step
  std::vector<LineFit> fits;                    // per head, over the first fit_steps updates
  std::vector<double> sign_prediction;          // per head: lr * sqrt(numel(W_k))
  std::vector<double> gradient_prediction;      // per head: lr * ||dL/dW_k|| at initialization
};

/// Proposition 2: from a LION-DG initialization, trains `steps` steps with SGD (no
/// momentum) and with AdamW and records the auxiliary heads' weight norms and the
/// aux/main gradient ratio. Writes `csv_path` (one row per step) if not empty.
std::vector<GrowthSeries> verify_growth(const TheoryConfig& config, const std::string& csv_path);

struct ArchitectureSide {
  std::string design;                    // "side-tap" | "in-branch"
  double main_grad_to_aux_heads_at_init = 0;   // ||d L_main / d theta_aux|| at init
  double aux_grad_to_backbone_at_init = 0;     // ||d alpha sum L_aux / d theta_backbone|| at init
  double main_logit_shift_after = 0;     // ||logits - logits with aux heads zeroed|| / ||logits|| after training
  std::vector<double> grad_ratio;        // aux/main backbone-gradient ratio per step
  std::vector<double> main_loss;         // per step
};

/// Theorem 1: ResNet-DS with side-tap heads vs heads inside the residual stream,
/// both LION-DG initialized, at initialization and over `steps` AdamW steps.
std::vector<ArchitectureSide> verify_architecture(const TheoryConfig& config, const std::string& csv_path);

}  // namespace liondg
