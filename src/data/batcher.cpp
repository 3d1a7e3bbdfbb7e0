// Training batches: seeded shuffling, horizontal flips, normalization.

#include <liondg/data/batcher.h>

#include <numeric>

namespace liondg {

ChannelStats channel_stats(const torch::Tensor& images) {
  TORCH_CHECK_VALUE(images.dim() == 4, "channel_stats expects (N,C,H,W) images, got ", images.sizes());
  // Per channel: sum and sum of squares in double precision, chunked to bound memory.
  const int64_t channels = images.size(1);
  torch::Tensor sum = torch::zeros({channels}, torch::kFloat64);
  torch::Tensor sum_sq = torch::zeros({channels}, torch::kFloat64);
  constexpr int64_t kChunk = 4096;
  for (int64_t start = 0; start < images.size(0); start += kChunk) {
    torch::Tensor x = images.narrow(0, start, std::min(kChunk, images.size(0) - start)).to(torch::kFloat64) / 255.0;
    sum += x.sum(/*dim=*/{0, 2, 3});
    sum_sq += (x * x).sum(/*dim=*/{0, 2, 3});
  }
  const double count = static_cast<double>(images.size(0) * images.size(2) * images.size(3));
  ChannelStats stats;
  for (int64_t c = 0; c < channels; ++c) {
    const double mean = sum[c].item<double>() / count;
    const double var = std::max(0.0, sum_sq[c].item<double>() / count - mean * mean);
    stats.mean.push_back(mean);
    // A constant channel would divide by zero; use std 1 then (documented).
    stats.std.push_back(var > 0.0 ? std::sqrt(var) : 1.0);
  }
  return stats;
}

torch::Tensor normalize(const torch::Tensor& images, const ChannelStats& stats) {
  const auto channels = static_cast<int64_t>(stats.mean.size());
  TORCH_CHECK_VALUE(images.dim() == 4 && images.size(1) == channels, "normalize: expected (N,", channels,
                    ",H,W) images, got ", images.sizes());
  torch::Tensor mean = torch::tensor(stats.mean, torch::kFloat64).to(torch::kFloat32).view({1, channels, 1, 1});
  torch::Tensor std = torch::tensor(stats.std, torch::kFloat64).to(torch::kFloat32).view({1, channels, 1, 1});
  return (images.to(torch::kFloat32).div_(255.0f) - mean).div_(std);
}

TrainBatcher::TrainBatcher(const Dataset& data, ChannelStats stats, BatcherOptions options)
    : data_(data), stats_(std::move(stats)), options_(options), rng_(options.seed) {
  TORCH_CHECK_VALUE(options_.batch_size > 0, "batch size must be > 0, got ", options_.batch_size);
  TORCH_CHECK_VALUE(options_.batch_size <= data_.size(), "batch size ", options_.batch_size,
                    " exceeds the training split size ", data_.size());
  order_.resize(static_cast<size_t>(data_.size()));
  reshuffle();
}

namespace {
// Fisher-Yates with our own generator: identical order for a seed on every platform.
void shuffle_indices(std::vector<int64_t>& order, std::mt19937_64& rng) {
  std::iota(order.begin(), order.end(), int64_t{0});
  for (size_t i = order.size() - 1; i > 0; --i) {
    const size_t j = static_cast<size_t>(rng() % (i + 1));
    std::swap(order[i], order[j]);
  }
}
}  // namespace

void TrainBatcher::reshuffle() {
  shuffle_indices(order_, rng_);
  cursor_ = 0;
}

CalibrationSampler::CalibrationSampler(const Dataset& data, ChannelStats stats, uint64_t seed)
    : data_(data), stats_(std::move(stats)), rng_(seed), order_(static_cast<size_t>(data.size())) {
  TORCH_CHECK_VALUE(data_.size() > 0, "calibration needs a non-empty training split");
  shuffle_indices(order_, rng_);
}

std::pair<torch::Tensor, torch::Tensor> CalibrationSampler::next(int64_t n) {
  TORCH_CHECK_VALUE(n > 0, "calibration batch size must be > 0, got ", n);
  std::vector<int64_t> picked;
  picked.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (cursor_ == order_.size()) {
      shuffle_indices(order_, rng_);
      cursor_ = 0;
    }
    picked.push_back(order_[cursor_++]);
  }
  torch::Tensor index = torch::tensor(picked, torch::kInt64);
  return {normalize(data_.images.index_select(0, index), stats_), data_.labels.index_select(0, index)};
}

std::pair<torch::Tensor, torch::Tensor> TrainBatcher::next() {
  const auto batch = static_cast<size_t>(options_.batch_size);
  if (cursor_ + batch > order_.size()) {
    ++epoch_;
    reshuffle();
  }
  torch::Tensor index = torch::from_blob(order_.data() + cursor_, {options_.batch_size}, torch::kInt64).clone();
  cursor_ += batch;
  torch::Tensor images = normalize(data_.images.index_select(0, index), stats_);
  if (options_.hflip) {
    std::vector<uint8_t> flip(batch);
    for (auto& f : flip) f = static_cast<uint8_t>(rng_() & 1u);
    torch::Tensor mask = torch::from_blob(flip.data(), {options_.batch_size, 1, 1, 1}, torch::kUInt8).to(torch::kBool);
    images = torch::where(mask, images.flip(/*dims=*/{3}), images);
  }
  return {images, data_.labels.index_select(0, index)};
}

}  // namespace liondg
