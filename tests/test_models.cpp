// Models: output shapes, architecture, parameter roles, side-taps, the tap API.

#include "expect.h"
#include "fixtures.h"

#include <liondg/errors.h>
#include <liondg/init/init.h>
#include <liondg/models/registry.h>

#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <limits>
#include <set>

namespace liondg {
namespace {

void expect_output_shapes(DSModelImpl& model, const std::vector<int64_t>& input, int64_t classes, int64_t aux) {
  model.eval();
  torch::NoGradGuard no_grad;
  DSOutput out = model.forward(torch::randn(input));
  EXPECT_EQ(out.logits.sizes(), torch::IntArrayRef({input[0], classes}));
  ASSERT_EQ(static_cast<int64_t>(out.aux_logits.size()), aux);
  for (const auto& a : out.aux_logits) EXPECT_EQ(a.sizes(), torch::IntArrayRef({input[0], classes}));
}

TEST(DenseNetDS, OutputShapesCifarAndFashionMnist) {
  DenseNetDS cifar(DenseNetDSOptions(/*num_classes=*/10));
  expect_output_shapes(*cifar, {2, 3, 32, 32}, 10, 2);
  DenseNetDS fmnist(DenseNetDSOptions(/*num_classes=*/10).in_channels(1));
  expect_output_shapes(*fmnist, {2, 1, 28, 28}, 10, 2);
  DenseNetDS c100(DenseNetDSOptions(/*num_classes=*/100));
  expect_output_shapes(*c100, {2, 3, 32, 32}, 100, 2);
}

TEST(DenseNetDS, ChannelProgressionAndParameterCountFollowTheText) {
  // Stem 24, three blocks of 6 layers with growth 12, compression 0.5:
  // block1 24+72 = 96 -> 48; block2 48+72 = 120 -> 60; block3 60+72 = 132.
  DenseNetDS net(DenseNetDSOptions(/*num_classes=*/10));
  EXPECT_EQ(net->block_channels(), std::vector<int64_t>({96, 120, 132}));
  // Parameter count derived independently from the architecture text.
  int64_t expected = 3 * 24 * 9;  // stem conv, no bias
  int64_t c = 24;
  for (int b = 0; b < 3; ++b) {
    for (int l = 0; l < 6; ++l) {
      expected += 2 * c + c * 12 * 9;  // BN(c) + Conv3x3(c -> 12)
      c += 12;
    }
    if (b < 2) {
      expected += 2 * c + c * (c / 2);  // BN(c) + Conv1x1(c -> c/2)
      c /= 2;
    }
  }
  expected += 2 * c;              // final BN
  expected += c * 10 + 10;        // main head
  expected += 96 * 10 + 10 + 120 * 10 + 10;  // aux heads
  EXPECT_EQ(parameter_counts(*net).at("total"), expected);
  EXPECT_EQ(expected, 163182);  // not the paper's "~77K" (see docs/models.md)
}

TEST(ResNetDS, OutputShapesAndTaps) {
  ResNetDS net(ResNetDSOptions(/*num_classes=*/10));
  expect_output_shapes(*net, {2, 3, 32, 32}, 10, 2);
  EXPECT_EQ(net->aux_taps(), std::vector<std::string>({"stage1", "stage2"}));
  ResNetDS gray(ResNetDSOptions(/*num_classes=*/10).in_channels(1).widths({8, 16}).blocks_per_stage({2, 2})
                    .aux_after_stages({1}));
  expect_output_shapes(*gray, {3, 1, 28, 28}, 10, 1);
}

TEST(Models, EveryParameterHasExactlyTheExpectedRole) {
  for (const std::string name : {"densenet-ds", "resnet-ds"}) {
    ModelSpec spec;
    spec.name = name;
    auto model = make_model(spec);
    std::map<std::string, int64_t> seen;
    for (const auto& [pname, role] : parameter_roles(*model)) {
      seen[role.str()]++;
      if (pname.rfind("aux_heads.0.", 0) == 0) EXPECT_EQ(role, ParamRole::aux_head(0)) << pname;
      else if (pname.rfind("aux_heads.1.", 0) == 0) EXPECT_EQ(role, ParamRole::aux_head(1)) << pname;
      else if (pname.rfind("main_head.", 0) == 0) EXPECT_EQ(role, ParamRole::main_head()) << pname;
      else EXPECT_EQ(role, ParamRole::backbone()) << pname;
    }
    EXPECT_EQ(seen["main_head"], 2) << name;    // weight + bias
    EXPECT_EQ(seen["aux_head_0"], 2) << name;
    EXPECT_EQ(seen["aux_head_1"], 2) << name;
    EXPECT_GT(seen["backbone"], 10) << name;
    const auto counts = parameter_counts(*model);
    EXPECT_EQ(counts.at("total"), counts.at("backbone") + counts.at("main_head") + counts.at("aux_heads"));
    // named_parameters_by_role partitions the parameters.
    int64_t n = 0;
    for (const auto& role : {ParamRole::backbone(), ParamRole::main_head(), ParamRole::aux_head(0),
                             ParamRole::aux_head(1)}) {
      n += static_cast<int64_t>(named_parameters_by_role(*model, role).size());
    }
    EXPECT_EQ(n, static_cast<int64_t>(model->parameters().size()));
  }
}

// Side-taps read but never modify the stream: changing every auxiliary-head
// parameter leaves the main logits bitwise unchanged.
TEST(Models, AuxHeadsNeverChangeTheMainPath) {
  for (const std::string name : {"densenet-ds", "resnet-ds"}) {
    ModelSpec spec;
    spec.name = name;
    spec.block_layers = {2, 2, 2};
    spec.blocks_per_stage = {1, 1, 1};
    auto model = make_model(spec);
    model->eval();
    torch::NoGradGuard no_grad;
    torch::Tensor x = torch::randn({4, 3, 16, 16});
    DSOutput before = model->forward(x);
    for (auto& p : parameters_of_kind(*model, ParamRole::Kind::kAuxHead)) p.add_(torch::randn_like(p));
    DSOutput after = model->forward(x);
    EXPECT_TRUE(torch::equal(before.logits, after.logits)) << name;
    EXPECT_FALSE(torch::equal(before.aux_logits[0], after.aux_logits[0])) << name;
  }
}

TEST(Models, InvalidOptionsAreRejectedWithTheBadValue) {
  try {
    DenseNetDS net(DenseNetDSOptions(10).aux_after_blocks({3}));
    FAIL() << "expected an error";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("aux head after block 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(DenseNetDS(DenseNetDSOptions(10).compression(0.0)), c10::ValueError);
  EXPECT_THROW(DenseNetDS(DenseNetDSOptions(10).growth_rate(0)), c10::ValueError);
  // Sizes whose width arithmetic would overflow int64 are refused by their value (the
  // sanitizer build checks that no overflow happens on the way).
  const int64_t huge = int64_t{1} << 62;
  const auto refuses = [](const DenseNetDSOptions& o, const std::string& part) {
    testing::expect_throws<c10::ValueError>([&] { dense_block_channels(o); }, {part});
  };
  refuses(DenseNetDSOptions(10).growth_rate(huge), "growth_rate must be in [1, 1048576], got 4611686018427387904");
  refuses(DenseNetDSOptions(10).stem_channels(huge), "stem_channels must be in [1, 1048576]");
  refuses(DenseNetDSOptions(10).in_channels(-huge), "in_channels must be in [1, 1048576]");
  refuses(DenseNetDSOptions(10).block_layers({6, huge, 6}), "block 2 would be wider than 1048576 channels");
  refuses(DenseNetDSOptions(10).growth_rate(kMaxDenseNetChannels).block_layers({1}),
          "block 1 would be wider than 1048576 channels (24 in + 1 layers x growth_rate 1048576)");
  // The largest accepted width is exactly the bound.
  EXPECT_EQ(dense_block_channels(DenseNetDSOptions(10).stem_channels(kMaxDenseNetChannels - 6 * 12).block_layers({6}))
                .back(),
            kMaxDenseNetChannels);
  for (const int64_t growth : {huge, -huge, std::numeric_limits<int64_t>::max()}) {
    ModelSpec spec;
    spec.growth_rate = growth;  // the registry doubles it for the stem
    testing::expect_throws<c10::ValueError>([&] { bf16_refusal(spec); },
                                            {"growth_rate must be in [1, 1048576], got " + std::to_string(growth)});
  }
  EXPECT_THROW(ResNetDS(ResNetDSOptions(10).widths({16, 32}).blocks_per_stage({1})), c10::ValueError);
  ModelSpec spec;
  spec.name = "vgg";
  EXPECT_THROW(make_model(spec), UsageError);
  DenseNetDS net(testing::tiny_densenet());
  EXPECT_THROW(net->forward(torch::randn({1, 1, 16, 16})), c10::ValueError);  // wrong channel count
}

TEST(Models, SaveAndLoadRoundTrip) {
  testing::TempDir dir;
  DenseNetDS a(testing::tiny_densenet());
  torch::save(a, dir.file("m.pt"));
  DenseNetDS b(testing::tiny_densenet());
  torch::load(b, dir.file("m.pt"));
  a->eval();
  b->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 3, 16, 16});
  EXPECT_TRUE(torch::equal(a->forward(x).logits, b->forward(x).logits));
}

// ------------------------------------------------------------------ the tap API (user backbone)

// A user's own backbone: two conv stages, tapping after each.
class TwoStageNetImpl : public TapBackboneImpl {
 public:
  TwoStageNetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).padding(1).stride(2)));
  }
  torch::Tensor forward(const torch::Tensor& x, Taps& taps) override {
    torch::Tensor h = taps.tap("stage1", torch::relu(conv1->forward(x)));
    return taps.tap("stage2", torch::relu(conv2->forward(h)));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
};

TEST(TapApi, WrapsAUserBackboneWithRolesAndLionDG) {
  DeeplySupervised net(std::make_shared<TwoStageNetImpl>(),
                       DeeplySupervisedOptions(/*num_classes=*/5, /*feature_channels=*/16).tap("stage1", 8));
  DSOutput out = net->forward(torch::randn({2, 3, 8, 8}));
  EXPECT_EQ(out.logits.sizes(), torch::IntArrayRef({2, 5}));
  ASSERT_EQ(out.aux_logits.size(), 1u);
  EXPECT_EQ(net->aux_taps(), std::vector<std::string>({"stage1"}));
  EXPECT_EQ(named_parameters_by_role(*net, ParamRole::backbone()).size(), 4u);  // two convs, weight + bias
  lion_dg_init_(*net);
  EXPECT_EQ(net->aux_head(0)->last_layer()->weight.abs().max().item<float>(), 0.0f);
}

TEST(TapApi, AMissingTapIsAClearError) {
  DeeplySupervised net(std::make_shared<TwoStageNetImpl>(),
                       DeeplySupervisedOptions(5, 16).tap("stage3", 16));
  try {
    net->forward(torch::randn({1, 3, 8, 8}));
    FAIL() << "expected an error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("stage3"), std::string::npos);
  }
}

}  // namespace
}  // namespace liondg
