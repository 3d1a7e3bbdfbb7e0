#pragma once
// Training batches: a seeded reshuffle every epoch, random horizontal flip,
// per-channel normalization, all on whole batch tensors.

#include <liondg/data/dataset.h>

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace liondg {

/// Per-channel mean and standard deviation of images scaled to [0, 1].
struct ChannelStats {
  std::vector<double> mean;
  std::vector<double> std;
};

/// Mean and (population) standard deviation per channel over all pixels of
/// `images` (uint8 (N,C,H,W)), computed in double precision.
ChannelStats channel_stats(const torch::Tensor& images);

/// uint8 (N,C,H,W) -> float (N,C,H,W): (x / 255 - mean[c]) / std[c].
torch::Tensor normalize(const torch::Tensor& images, const ChannelStats& stats);

struct BatcherOptions {
  int64_t batch_size = 128;
  bool hflip = true;      // random horizontal flip with p = 0.5
  uint64_t seed = 42;     // shuffling and flip decisions
};

/// Yields normalized training batches forever, reshuffling at every epoch.
/// Incomplete tail batches are dropped so every step sees `batch_size` images.
class TrainBatcher {
 public:
  TrainBatcher(const Dataset& data, ChannelStats stats, BatcherOptions options);
  // -> images float (B,C,H,W), labels int64 (B)
  std::pair<torch::Tensor, torch::Tensor> next();
  int64_t epoch() const { return epoch_; }

 private:
  void reshuffle();

  const Dataset& data_;
  ChannelStats stats_;
  BatcherOptions options_;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
  size_t cursor_ = 0;
  int64_t epoch_ = 0;
};

/// Calibration images for data-dependent initializations: `next(n)` returns n
/// normalized, unaugmented training images in a seeded random order (cycling).
class CalibrationSampler {
 public:
  CalibrationSampler(const Dataset& data, ChannelStats stats, uint64_t seed);
  // -> images float (n,C,H,W), labels int64 (n)
  std::pair<torch::Tensor, torch::Tensor> next(int64_t n);

 private:
  const Dataset& data_;
  ChannelStats stats_;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
  size_t cursor_ = 0;
};

}  // namespace liondg
