#pragma once
// Initialization policies. Each policy is a free function ending in `_` that
// writes parameters in place under torch::NoGradGuard.

#include <liondg/models/ds_model.h>

#include <string>
#include <vector>

namespace liondg {

/// He (Kaiming) normal initialization (He et al., "Delving Deep into Rectifiers",
/// ICCV 2015): every Conv/Linear weight W ~ N(0, 2 / fan_in) (fan-in mode, ReLU
/// gain sqrt(2)); every Conv/Linear bias 0; BatchNorm weight 1 and bias 0.
/// Applies to every module of `model`, heads included.
void he_init_(torch::nn::Module& model);

/// Xavier/Glorot uniform initialization (Glorot & Bengio, AISTATS 2010): every
/// Conv/Linear weight W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)); biases 0;
/// BatchNorm weight 1 and bias 0.
void xavier_init_(torch::nn::Module& model);

/// Sets the last layer (the logits layer) of every auxiliary head to exactly
/// zero, weight and bias; nothing else is touched. This is LION-DG's rule
/// ("LION-DG: Layer-Informed Initialization with Deep Gradient Protocols",
/// Sec. 3): with W_aux = 0, dL_aux/dh = W_aux^T dL_aux/dz = 0, so at
/// initialization the auxiliary losses send exactly zero gradient into the
/// backbone (Proposition 1), while dL_aux/dW_aux = (dL/dz) h^T != 0 lets the
/// heads grow from zero (Proposition 2).
void zero_aux_heads_(DSModelImpl& model);

/// LION-DG (paper cited above): he_init_ on the whole model, then zero_aux_heads_.
void lion_dg_init_(DSModelImpl& model);

/// A named initialization policy.
enum class InitPolicy { kHe, kXavier, kLionDG };

/// Names accepted by `init_policy_from_string`: "he", "xavier", "lion-dg".
const std::vector<std::string>& init_policy_names();
/// Parses a policy name; throws UsageError listing the valid names.
InitPolicy init_policy_from_string(const std::string& name);
std::string to_string(InitPolicy policy);

/// The one entry point: applies `policy` to any deeply-supervised model.
void init_model_(DSModelImpl& model, InitPolicy policy);
/// Same, by name.
void init_model_(DSModelImpl& model, const std::string& policy);

}  // namespace liondg
