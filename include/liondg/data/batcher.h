#pragma once
// Training batches: a seeded reshuffle every epoch, random horizontal flip,
// optional random crop with zero padding, per-channel normalization, all on
// whole batch tensors; the next batch is prepared while the current one trains.

#include <liondg/data/dataset.h>

#include <cstdint>
#include <future>
#include <random>
#include <string>
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

/// The per-channel constants of normalize(), as float (1,C,1,1) tensors on `device`.
struct NormalizeTensors {
  torch::Tensor mean, std;
};
NormalizeTensors normalize_tensors(const ChannelStats& stats, const torch::Device& device);

/// uint8 (N,C,H,W) -> float (N,C,H,W): (x / 255 - mean[c]) / std[c].
torch::Tensor normalize(const torch::Tensor& images, const ChannelStats& stats);
/// The same with the constants made once (e.g. for every batch of an evaluation).
torch::Tensor normalize(const torch::Tensor& images, const NormalizeTensors& constants);

struct BatcherOptions {
  int64_t batch_size = 128;
  bool hflip = true;      // random horizontal flip with p = 0.5
  uint64_t seed = 42;     // shuffling, flip and crop decisions
  /// Random crop of the original size from the image zero-padded by this many
  /// pixels on each side (torchvision's RandomCrop(size, padding=p); 0 = off, the
  /// paper's protocol). Padding is black (0) before normalization, as in torchvision.
  int64_t crop_padding = 0;
  /// Prepare the next batch on a background thread while the caller trains on the
  /// current one. Batches are identical with and without prefetching.
  bool prefetch = true;
  /// Hand out batches in channels-last (NHWC) memory format.
  bool channels_last = false;
  /// Data parallelism: the global batch of `batch_size` images (drawn exactly as with
  /// one shard) is cut into `shard_count` equal parts and this batcher hands out part
  /// `shard_rank`: rows [rank B/W, (rank+1) B/W).
  int64_t shard_rank = 0;
  int64_t shard_count = 1;
};

/// Random crops of a uint8 or float batch (B,C,H,W) -> (B,C,H,W): image b is cut at
/// offset (dy[b], dx[b]) in [0, 2p] of its zero-padded copy. Whole-tensor gathers.
torch::Tensor random_crop(const torch::Tensor& images, int64_t padding, const std::vector<int64_t>& dy,
                          const std::vector<int64_t>& dx);

/// The random decisions of one training batch (this shard's rows of it).
struct BatchPlan {
  torch::Tensor index;          // int64 (B): rows of the training split
  std::vector<int64_t> dy, dx;  // crop offsets in [0, 2 crop_padding] (empty without crops)
  std::vector<uint8_t> flip;    // 1 = mirrored (empty without flips)
};

/// A plan applied with tensor operations only (no host synchronization; usable on
/// any device and inside a CUDA graph): rows `index` of `images`, cropped at
/// (dy, dx) from a copy zero-padded by `padding`, mirrored where `flip`, normalized.
/// Equal to what TrainBatcher::next() returns for the same plan.
// images uint8 (N,C,H,W); index, dy, dx int64 (B); flip bool (B); mean, std float (1,C,1,1)
// -> float (B,C,H,W). dy/dx undefined = no crop, flip undefined = no flips.
torch::Tensor augment_batch(const torch::Tensor& images, const torch::Tensor& index, const torch::Tensor& dy,
                            const torch::Tensor& dx, const torch::Tensor& flip, int64_t padding,
                            const torch::Tensor& mean, const torch::Tensor& std);

/// Where a TrainBatcher stands after the batches it handed out (for checkpoints).
struct BatcherState {
  std::string rng;             // std::mt19937_64 state, as its operator<< writes it
  std::vector<int64_t> order;  // this epoch's order
  int64_t cursor = 0;          // next position in `order`
  int64_t epoch = 0;
};

/// Yields normalized training batches forever, reshuffling at every epoch.
/// Incomplete tail batches are dropped so every step sees `batch_size` images.
class TrainBatcher {
 public:
  using Batch = std::pair<torch::Tensor, torch::Tensor>;
  TrainBatcher(const Dataset& data, ChannelStats stats, BatcherOptions options);
  ~TrainBatcher();
  TrainBatcher(const TrainBatcher&) = delete;
  TrainBatcher& operator=(const TrainBatcher&) = delete;
  // -> images float (B,C,H,W), labels int64 (B)
  Batch next();
  /// The decisions of the next batch without making it (needs prefetch off): for
  /// callers that assemble batches elsewhere, e.g. on a GPU with augment_batch().
  BatchPlan next_plan();
  /// Epochs completed by the batches handed out so far.
  int64_t epoch() const { return epoch_; }
  /// The state after the batches handed out so far (a batch being prefetched is not
  /// counted): restore() of it makes the next batches those that would have followed.
  const BatcherState& state() const { return handed_; }
  /// Continues from `state` (same data, batch size and options); drops a prefetched batch.
  void restore(const BatcherState& state);

 private:
  struct Made {
    Batch batch;
    BatcherState after;  // the state right after this batch was made
  };
  void reshuffle();
  BatchPlan draw(BatcherState& after);  // the next batch's decisions; advances rng_ and order_
  Made make_batch();  // draws from rng_; only ever runs on one thread at a time


  const Dataset& data_;
  ChannelStats stats_;
  BatcherOptions options_;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
  size_t cursor_ = 0;
  int64_t epoch_ = 0;       // of the batches handed out
  int64_t made_epoch_ = 0;  // of the batches made (one ahead with prefetching)
  std::future<Made> pending_;
  BatcherState handed_;
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
