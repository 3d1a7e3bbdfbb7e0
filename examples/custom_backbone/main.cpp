// Attach auxiliary heads to your own libtorch backbone, initialize it with
// LION-DG, check Proposition 1 and train it briefly with the paper's protocol.

#include <liondg/liondg.h>

#include <iostream>

// 1. Your backbone: derive from TapBackboneImpl and call taps.tap(name, h)
//    wherever an auxiliary head may read. The tap returns h unchanged.
class SmallNetImpl : public liondg::TapBackboneImpl {
 public:
  SmallNetImpl() {
    conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 16, 3).padding(1)));
    bn1_ = register_module("bn1", torch::nn::BatchNorm2d(16));
    conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1).stride(2)));
    bn2_ = register_module("bn2", torch::nn::BatchNorm2d(32));
  }
  // x: (N,3,H,W) -> features (N,32,H/2,W/2)
  torch::Tensor forward(const torch::Tensor& x, liondg::Taps& taps) override {
    torch::Tensor h = taps.tap("stage1", torch::relu(bn1_->forward(conv1_->forward(x))));
    return torch::relu(bn2_->forward(conv2_->forward(h)));
  }

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
};

int main() {
  // 2. Wrap it: main head on the final features, one auxiliary head on "stage1".
  liondg::DeeplySupervised net(std::make_shared<SmallNetImpl>(),
                               liondg::DeeplySupervisedOptions(/*num_classes=*/4, /*feature_channels=*/32)
                                   .tap("stage1", /*channels=*/16));

  // 3. LION-DG: He everywhere, auxiliary logits layers exactly zero.
  torch::manual_seed(0);
  liondg::init_model_(*net, liondg::InitPolicy::kLionDG);
  for (const auto& [name, role] : liondg::parameter_roles(*net)) std::cout << name << " -> " << role.str() << "\n";

  // 4. Proposition 1 on a batch: no auxiliary gradient reaches the backbone.
  liondg::SyntheticOptions data_options;
  data_options.num_classes = 4;
  data_options.height = data_options.width = 16;
  data_options.train_size = 256;
  data_options.test_size = 64;
  liondg::DataSource data = liondg::make_synthetic(data_options);
  torch::Tensor x = liondg::normalize(data.train.images.narrow(0, 0, 32), liondg::channel_stats(data.train.images));
  liondg::GradientProbe probe = liondg::probe_gradients(*net, x, data.train.labels.narrow(0, 0, 32), 0.3);
  std::cout << "backbone max |grad aux| at init: " << probe.backbone_aux_max_abs << "\n";

  // 5. Train with the paper's protocol (AdamW 1e-3, wd 0.05, alpha 0.3), short budget.
  liondg::TrainSummary s = liondg::train(*net, data, liondg::TrainOptions().steps(30).batch_size(32).eval_every(0));
  std::cout << "status " << s.status << ", val acc " << s.final_eval.main_acc << "\n";
  return probe.backbone_aux_max_abs == 0.0 && s.status == "completed" ? 0 : 1;
}
