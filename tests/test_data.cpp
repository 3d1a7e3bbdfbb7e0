// Data: IDX and CIFAR binary readers on fixture files (well-formed and
// malformed), synthetic data, normalization statistics and the batcher.

#include "fixtures.h"

#include <liondg/data/batcher.h>
#include <liondg/errors.h>
#include <liondg/util/fs.h>

#include <unistd.h>

#include "expect.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace liondg {
namespace {

using testing::TempDir;
using testing::idx_bytes;
using testing::write_bytes;

using testing::expect_data_error;

TEST(Idx, ReadsPlainAndGzipWithShapeAndValues) {
  TempDir dir;
  const auto bytes = idx_bytes({3, 2, 4});
  write_bytes(dir.file("a.idx"), bytes);
  write_bytes(dir.file("a.idx.gz"), bytes, /*gzip=*/true);
  for (const std::string name : {"a.idx", "a.idx.gz"}) {
    torch::Tensor t = read_idx(dir.file(name));
    EXPECT_EQ(t.sizes(), torch::IntArrayRef({3, 2, 4}));
    EXPECT_EQ(t.scalar_type(), torch::kUInt8);
    EXPECT_EQ(t.flatten()[5].item<int>(), (5 * 7) % 256);
    EXPECT_EQ(t.flatten()[23].item<int>(), (23 * 7) % 256);
  }
}

TEST(Idx, MalformedFilesAreRejectedNamingTheFile) {
  TempDir dir;
  auto good = idx_bytes({2, 3, 3});
  auto bad_magic = good;
  bad_magic[0] = 0x1f;
  bad_magic[1] = 0x00;
  write_bytes(dir.file("magic"), bad_magic);
  expect_data_error([&] { read_idx(dir.file("magic")); }, {"magic", dir.file("magic")});

  auto bad_type = good;
  bad_type[2] = 0x0D;  // float
  write_bytes(dir.file("type"), bad_type);
  expect_data_error([&] { read_idx(dir.file("type")); }, {"unsupported IDX data type"});

  auto truncated = good;
  truncated.resize(truncated.size() - 5);
  write_bytes(dir.file("trunc"), truncated);
  expect_data_error([&] { read_idx(dir.file("trunc")); }, {"truncated", "18 data bytes", "13"});

  auto oversized = good;
  oversized.push_back(1);
  write_bytes(dir.file("over"), oversized);
  expect_data_error([&] { read_idx(dir.file("over")); }, {"oversized"});

  write_bytes(dir.file("short"), {0, 0});
  expect_data_error([&] { read_idx(dir.file("short")); }, {"header"});

  // A gzip file cut in the middle of its stream.
  write_bytes(dir.file("cut.gz"), idx_bytes({50, 20, 20}), /*gzip=*/true);
  {
    std::ifstream in(dir.file("cut.gz"), std::ios::binary);
    std::vector<char> all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<uint8_t> half(all.begin(), all.begin() + static_cast<long>(all.size() / 2));
    write_bytes(dir.file("cut.gz"), half);
  }
  expect_data_error([&] { read_idx(dir.file("cut.gz")); }, {"cut.gz"});
  expect_data_error([&] { read_idx(dir.file("missing")); }, {"missing", "no such file"});
}

void write_idx_dataset(const TempDir& dir, int64_t train, int64_t test, uint8_t max_label = 9) {
  auto labels = [&](int64_t n) {
    std::vector<uint8_t> v;
    for (int64_t i = 0; i < n; ++i) v.push_back(static_cast<uint8_t>(i % (max_label + 1)));
    return v;
  };
  write_bytes(dir.file("train-images-idx3-ubyte.gz"), idx_bytes({uint32_t(train), 6, 6}), true);
  write_bytes(dir.file("train-labels-idx1-ubyte.gz"), idx_bytes({uint32_t(train)}, labels(train)), true);
  write_bytes(dir.file("t10k-images-idx3-ubyte"), idx_bytes({uint32_t(test), 6, 6}, {}, 3));
  write_bytes(dir.file("t10k-labels-idx1-ubyte"), idx_bytes({uint32_t(test)}, labels(test)));
}

TEST(Idx, FashionMnistLayoutLoadsWithLabels) {
  TempDir dir;
  write_idx_dataset(dir, 20, 10);
  DataSource src = load_dataset("fashion-mnist", dir.path());
  EXPECT_EQ(src.format, "idx");
  EXPECT_EQ(src.num_classes(), 10);
  EXPECT_EQ(src.class_names[9], "Ankle boot");
  EXPECT_EQ(src.train.images.sizes(), torch::IntArrayRef({20, 1, 6, 6}));
  EXPECT_EQ(src.test.images.sizes(), torch::IntArrayRef({10, 1, 6, 6}));
  EXPECT_EQ(src.train.labels[13].item<int64_t>(), 3);
  EXPECT_EQ(src.test.images[0][0][0][1].item<int>(), (1 * 7 + 3) % 256);
}

TEST(Idx, InconsistentSplitsAreRejected) {
  TempDir dir;
  write_idx_dataset(dir, 20, 10, /*max_label=*/12);
  expect_data_error([&] { load_dataset("mnist", dir.path()); }, {"label 12 out of range", "train-labels"});
  write_bytes(dir.file("train-labels-idx1-ubyte.gz"), idx_bytes({19}, std::vector<uint8_t>(19, 1)), true);
  expect_data_error([&] { load_dataset("mnist", dir.path()); }, {"20 images", "19 labels"});
  ::unlink(dir.file("t10k-labels-idx1-ubyte").c_str());
  write_idx_dataset(dir, 20, 10);
  ::unlink(dir.file("t10k-labels-idx1-ubyte").c_str());
  expect_data_error([&] { load_dataset("mnist", dir.path()); }, {"t10k-labels-idx1-ubyte"});
}

std::vector<uint8_t> cifar_records(int64_t n, int label_bytes, int label_mod) {
  std::vector<uint8_t> b;
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < label_bytes; ++l) b.push_back(static_cast<uint8_t>((i + l) % label_mod));
    for (int p = 0; p < 3072; ++p) b.push_back(static_cast<uint8_t>((i * 31 + p) % 251));
  }
  return b;
}

TEST(Cifar, Cifar10BinaryLayoutLoads) {
  TempDir dir;
  const std::string root = dir.file("cifar-10-batches-bin");
  ASSERT_TRUE(make_directories(root));
  for (int i = 1; i <= 5; ++i) write_bytes(root + "/data_batch_" + std::to_string(i) + ".bin", cifar_records(4, 1, 10));
  write_bytes(root + "/test_batch.bin", cifar_records(3, 1, 10));
  DataSource src = load_dataset("cifar10", dir.path());  // parent directory is accepted
  EXPECT_EQ(src.format, "cifar10-binary");
  EXPECT_EQ(src.train.images.sizes(), torch::IntArrayRef({20, 3, 32, 32}));
  EXPECT_EQ(src.test.size(), 3);
  EXPECT_EQ(src.train.labels[2].item<int64_t>(), 2);
  // Record 2 of a batch: channel 1 (green), row 0, column 5 = pixel byte 1024 + 5.
  EXPECT_EQ(src.train.images[2][1][0][5].item<int>(), (2 * 31 + 1029) % 251);
  EXPECT_EQ(src.class_names[0], "airplane");
}

TEST(Cifar, MalformedCifarFilesAreRejected) {
  TempDir dir;
  auto recs = cifar_records(2, 1, 10);
  recs.pop_back();
  write_bytes(dir.file("bad.bin"), recs);
  expect_data_error([&] { read_cifar10_binary({dir.file("bad.bin")}); }, {"bad.bin", "3073-byte record"});
  write_bytes(dir.file("label.bin"), cifar_records(12, 1, 12));
  expect_data_error([&] { read_cifar10_binary({dir.file("label.bin")}); }, {"label 11 out of range"});
  write_bytes(dir.file("empty.bin"), {});
  expect_data_error([&] { read_cifar100_binary(dir.file("empty.bin")); }, {"empty.bin", "3074-byte record"});
  expect_data_error([&] { load_dataset("cifar10", dir.path()); }, {"data_batch_1.bin"});
}

TEST(Cifar, Cifar100BinaryHasCoarseAndFineLabels) {
  TempDir dir;
  write_bytes(dir.file("train.bin"), cifar_records(6, 2, 20));
  write_bytes(dir.file("test.bin"), cifar_records(2, 2, 20));
  DataSource src = load_dataset("cifar100", dir.path());
  EXPECT_EQ(src.num_classes(), 100);
  EXPECT_EQ(src.train.coarse_labels[4].item<int64_t>(), 4);
  EXPECT_EQ(src.train.labels[4].item<int64_t>(), 5);
  EXPECT_EQ(src.train.images[1][0][0][0].item<int>(), 31);
}

TEST(Datasets, UnknownNameAndMissingDirectory) {
  EXPECT_THROW(load_dataset("imagenet", ""), UsageError);
  EXPECT_THROW(load_dataset("cifar10", ""), UsageError);  // no default location
  expect_data_error([&] { load_dataset("mnist", "/nonexistent/mnist-dir"); }, {"/nonexistent/mnist-dir"});
}

TEST(Synthetic, DeterministicPerSeedAndBalanced) {
  DataSource a = testing::tiny_data(5), b = testing::tiny_data(5), c = testing::tiny_data(6);
  EXPECT_TRUE(torch::equal(a.train.images, b.train.images));
  EXPECT_TRUE(torch::equal(a.test.labels, b.test.labels));
  EXPECT_FALSE(torch::equal(a.train.images, c.train.images));
  EXPECT_EQ(a.train.images.sizes(), torch::IntArrayRef({256, 3, 16, 16}));
  EXPECT_EQ(a.train.labels.bincount().min().item<int64_t>(), 64);
}

TEST(Normalization, ChannelStatsAndNormalize) {
  // Channel 0 holds 0 and 255 equally (mean 0.5, std 0.5); channel 1 is constant 51 (std 0 -> 1).
  torch::Tensor img = torch::zeros({2, 2, 1, 2}, torch::kUInt8);
  img.select(1, 0).index_put_({0}, 255);
  img.select(1, 1).fill_(51);
  ChannelStats s = channel_stats(img);
  EXPECT_NEAR(s.mean[0], 0.5, 1e-12);
  EXPECT_NEAR(s.std[0], 0.5, 1e-12);
  EXPECT_NEAR(s.mean[1], 0.2, 1e-12);
  EXPECT_EQ(s.std[1], 1.0);
  torch::Tensor n = normalize(img, s);
  EXPECT_NEAR(n[0][0][0][0].item<float>(), 1.0f, 1e-6);
  EXPECT_NEAR(n[1][0][0][0].item<float>(), -1.0f, 1e-6);
  EXPECT_NEAR(n[1][1][0][1].item<float>(), 0.0f, 1e-6);
}

TEST(Batcher, SeededOrderFlipsAndEpochCoverage) {
  DataSource d = testing::tiny_data(1, 4, 8, /*train=*/64, /*test=*/8);
  // Make every image distinct and recognizable through its label column.
  ChannelStats stats = channel_stats(d.train.images);
  TrainBatcher a(d.train, stats, BatcherOptions{16, true, 9});
  TrainBatcher b(d.train, stats, BatcherOptions{16, true, 9});
  TrainBatcher c(d.train, stats, BatcherOptions{16, true, 10});
  bool any_difference = false;
  int flipped = 0, total = 0;
  for (int i = 0; i < 8; ++i) {
    auto [xa, ya] = a.next();
    auto [xb, yb] = b.next();
    auto [xc, yc] = c.next();
    EXPECT_TRUE(torch::equal(xa, xb));
    EXPECT_TRUE(torch::equal(ya, yb));
    any_difference |= !torch::equal(ya, yc) || !torch::equal(xa, xc);
    EXPECT_EQ(xa.sizes(), torch::IntArrayRef({16, 3, 8, 8}));
  }
  EXPECT_TRUE(any_difference);
  // Flip and coverage: without flips every image of an epoch appears exactly once.
  TrainBatcher plain(d.train, stats, BatcherOptions{16, false, 3});
  TrainBatcher flips(d.train, stats, BatcherOptions{16, true, 3});
  torch::Tensor all = normalize(d.train.images, stats).flatten(1);
  std::vector<int> seen(64, 0);
  for (int i = 0; i < 4; ++i) {
    auto [x, y] = plain.next();
    auto [xf, yf] = flips.next();
    EXPECT_TRUE(torch::equal(y, yf));
    for (int64_t j = 0; j < 16; ++j) {
      const bool same = torch::equal(x[j], xf[j]);
      const bool mirrored = torch::equal(x[j].flip({2}), xf[j]);
      EXPECT_TRUE(same || mirrored);
      flipped += (!same && mirrored);
      ++total;
      auto match = (all - x[j].flatten().unsqueeze(0)).abs().sum(1).eq(0).nonzero();
      ASSERT_EQ(match.size(0), 1);
      seen[match[0][0].item<int64_t>()]++;
    }
  }
  for (int s : seen) EXPECT_EQ(s, 1);
  EXPECT_GT(flipped, total / 5);
  EXPECT_LT(flipped, total * 4 / 5);
  EXPECT_THROW(TrainBatcher(d.train, stats, BatcherOptions{65, false, 1}), c10::ValueError);
}

}  // namespace
}  // namespace liondg
