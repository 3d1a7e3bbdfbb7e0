// Training batches: seeded shuffling, horizontal flips, normalization.

#include <liondg/data/batcher.h>

#include <array>
#include <numeric>
#include <sstream>

namespace liondg {

ChannelStats channel_stats(const torch::Tensor& images_in) {
  TORCH_CHECK_VALUE(images_in.dim() == 4, "channel_stats expects (N,C,H,W) images, got ", images_in.sizes());
  TORCH_CHECK_VALUE(images_in.scalar_type() == torch::kUInt8, "channel_stats expects uint8 images, got ",
                    images_in.scalar_type());
  // Exact: a 256-bin histogram per channel, then sums of v and v^2 in integers.
  const torch::Tensor images = images_in.contiguous();
  const int64_t n = images.size(0), channels = images.size(1), plane = images.size(2) * images.size(3);
  std::vector<std::array<int64_t, 256>> hist(static_cast<size_t>(channels));
  for (auto& h : hist) h.fill(0);
  const uint8_t* p = images.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < channels; ++c) {
      auto& h = hist[static_cast<size_t>(c)];
      for (int64_t k = 0; k < plane; ++k) ++h[*p++];
    }
  }
  ChannelStats stats;
  const double count = static_cast<double>(n * plane);
  for (const auto& h : hist) {
    int64_t sum = 0, sum_sq = 0;
    for (int64_t v = 0; v < 256; ++v) {
      sum += v * h[static_cast<size_t>(v)];
      sum_sq += v * v * h[static_cast<size_t>(v)];
    }
    const double mean = static_cast<double>(sum) / count / 255.0;
    const double var = std::max(0.0, static_cast<double>(sum_sq) / count / (255.0 * 255.0) - mean * mean);
    stats.mean.push_back(mean);
    // A constant channel would divide by zero; use std 1 then (documented).
    stats.std.push_back(var > 0.0 ? std::sqrt(var) : 1.0);
  }
  return stats;
}

NormalizeTensors normalize_tensors(const ChannelStats& stats, const torch::Device& device) {
  const auto channels = static_cast<int64_t>(stats.mean.size());
  TORCH_CHECK_VALUE(stats.std.size() == stats.mean.size(), "normalize: ", stats.mean.size(), " means but ",
                    stats.std.size(), " standard deviations");
  return {torch::tensor(stats.mean, torch::kFloat64).to(device, torch::kFloat32).view({1, channels, 1, 1}),
          torch::tensor(stats.std, torch::kFloat64).to(device, torch::kFloat32).view({1, channels, 1, 1})};
}

torch::Tensor normalize(const torch::Tensor& images, const NormalizeTensors& constants) {
  const int64_t channels = constants.mean.size(1);
  TORCH_CHECK_VALUE(images.dim() == 4 && images.size(1) == channels, "normalize: expected (N,", channels,
                    ",H,W) images, got ", images.sizes());
  return (images.to(torch::kFloat32).div_(255.0f) - constants.mean).div_(constants.std);
}

torch::Tensor normalize(const torch::Tensor& images, const ChannelStats& stats) {
  return normalize(images, normalize_tensors(stats, images.device()));
}

TrainBatcher::TrainBatcher(const Dataset& data, ChannelStats stats, BatcherOptions options)
    : data_(data), stats_(std::move(stats)), options_(options), rng_(options.seed) {
  TORCH_CHECK_VALUE(options_.batch_size > 0, "batch size must be > 0, got ", options_.batch_size);
  TORCH_CHECK_VALUE(options_.batch_size <= data_.size(), "batch size ", options_.batch_size,
                    " exceeds the training split size ", data_.size());
  TORCH_CHECK_VALUE(options_.crop_padding >= 0, "crop padding must be >= 0, got ", options_.crop_padding);
  TORCH_CHECK_VALUE(options_.shard_count >= 1 && options_.shard_rank >= 0 && options_.shard_rank < options_.shard_count,
                    "batch shard ", options_.shard_rank, " of ", options_.shard_count, " is out of range");
  TORCH_CHECK_VALUE(options_.batch_size % options_.shard_count == 0, "batch size ", options_.batch_size,
                    " must be divisible by the number of ranks ", options_.shard_count);
  order_.resize(static_cast<size_t>(data_.size()));
  reshuffle();
  std::ostringstream rng_state;
  rng_state << rng_;
  handed_ = {rng_state.str(), order_, 0, 0};
}

TrainBatcher::~TrainBatcher() {
  if (pending_.valid()) pending_.wait();
}

torch::Tensor random_crop(const torch::Tensor& images, int64_t p, const std::vector<int64_t>& dy,
                          const std::vector<int64_t>& dx) {
  const int64_t b = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  TORCH_CHECK_VALUE(static_cast<int64_t>(dy.size()) == b && static_cast<int64_t>(dx.size()) == b,
                    "random_crop: one offset per image expected");
  if (p == 0) return images;
  torch::Tensor padded = torch::constant_pad_nd(images, {p, p, p, p}, /*value=*/0);  // (B,C,H+2p,W+2p)
  // rows[b, i] = dy[b] + i, cols[b, j] = dx[b] + j.
  torch::Tensor rows = torch::tensor(dy, torch::kInt64).view({b, 1}) + torch::arange(h, torch::kInt64).view({1, h});
  torch::Tensor cols = torch::tensor(dx, torch::kInt64).view({b, 1}) + torch::arange(w, torch::kInt64).view({1, w});
  torch::Tensor out = padded.gather(/*dim=*/2, rows.view({b, 1, h, 1}).expand({b, c, h, w + 2 * p}));
  return out.gather(/*dim=*/3, cols.view({b, 1, 1, w}).expand({b, c, h, w}));
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

TrainBatcher::Batch TrainBatcher::next() {
  Made m;
  if (!options_.prefetch) {
    m = make_batch();
  } else {
    if (!pending_.valid()) pending_ = std::async(std::launch::async, [this] { return make_batch(); });
    m = pending_.get();
    // The next batch is made while the caller trains on this one; make_batch is the
    // only user of rng_ and order_, and never runs twice at once.
    pending_ = std::async(std::launch::async, [this] { return make_batch(); });
  }
  handed_ = std::move(m.after);
  epoch_ = handed_.epoch;
  return std::move(m.batch);
}

void TrainBatcher::restore(const BatcherState& state) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(state.order.size()) == data_.size(), "batcher state holds an order of ",
                    state.order.size(), " images, the training split has ", data_.size());
  TORCH_CHECK_VALUE(state.cursor >= 0 && state.cursor <= data_.size(), "batcher state cursor ", state.cursor,
                    " is out of range");
  if (pending_.valid()) pending_.wait();
  pending_ = {};
  std::istringstream in(state.rng);
  in >> rng_;
  TORCH_CHECK_VALUE(!in.fail(), "batcher state holds no valid generator state");
  order_ = state.order;
  cursor_ = static_cast<size_t>(state.cursor);
  made_epoch_ = epoch_ = state.epoch;
  handed_ = state;
}

BatchPlan TrainBatcher::draw(BatcherState& after) {
  const auto batch = static_cast<size_t>(options_.batch_size);
  if (cursor_ + batch > order_.size()) {
    ++made_epoch_;
    reshuffle();
  }
  // This shard's rows of the global batch; random draws are made for the whole batch
  // so every shard sees the augmentation one process would apply.
  const int64_t rows = options_.batch_size / options_.shard_count;
  const auto first = static_cast<size_t>(options_.shard_rank * rows);
  BatchPlan plan;
  plan.index = torch::from_blob(order_.data() + cursor_ + first, {rows}, torch::kInt64).clone();
  cursor_ += batch;
  if (options_.crop_padding > 0) {
    const uint64_t span = static_cast<uint64_t>(2 * options_.crop_padding + 1);
    std::vector<int64_t> dy(batch), dx(batch);
    for (size_t i = 0; i < batch; ++i) {
      dy[i] = static_cast<int64_t>(rng_() % span);
      dx[i] = static_cast<int64_t>(rng_() % span);
    }
    plan.dy.assign(dy.begin() + first, dy.begin() + first + rows);
    plan.dx.assign(dx.begin() + first, dx.begin() + first + rows);
  }
  if (options_.hflip) {
    std::vector<uint8_t> flip(batch);
    for (auto& f : flip) f = static_cast<uint8_t>(rng_() & 1u);
    plan.flip.assign(flip.begin() + first, flip.begin() + first + rows);
  }
  std::ostringstream rng_state;
  rng_state << rng_;
  after = {rng_state.str(), order_, static_cast<int64_t>(cursor_), made_epoch_};
  return plan;
}

BatchPlan TrainBatcher::next_plan() {
  TORCH_CHECK_VALUE(!options_.prefetch, "TrainBatcher::next_plan needs prefetch off");
  BatcherState after;
  BatchPlan plan = draw(after);
  handed_ = std::move(after);
  epoch_ = handed_.epoch;
  return plan;
}

TrainBatcher::Made TrainBatcher::make_batch() {
  Made m;
  BatchPlan plan = draw(m.after);
  const auto rows = plan.index.size(0);
  torch::Tensor raw = data_.images.index_select(0, plan.index);
  if (!plan.dy.empty()) raw = random_crop(raw, options_.crop_padding, plan.dy, plan.dx);
  torch::Tensor images = normalize(raw, stats_);
  if (!plan.flip.empty()) {
    torch::Tensor mask = torch::from_blob(plan.flip.data(), {rows, 1, 1, 1}, torch::kUInt8).to(torch::kBool);
    images = torch::where(mask, images.flip(/*dims=*/{3}), images);
  }
  if (options_.channels_last) images = images.contiguous(torch::MemoryFormat::ChannelsLast);
  m.batch = {images, data_.labels.index_select(0, plan.index)};
  return m;
}

torch::Tensor augment_batch(const torch::Tensor& images, const torch::Tensor& index, const torch::Tensor& dy,
                            const torch::Tensor& dx, const torch::Tensor& flip, int64_t padding,
                            const torch::Tensor& mean, const torch::Tensor& std) {
  TORCH_CHECK_VALUE(images.dim() == 4 && images.scalar_type() == torch::kUInt8,
                    "augment_batch: expected uint8 (N,C,H,W) images, got ", images.sizes(), " ", images.dtype());
  const bool crop = dy.defined() && padding > 0;
  torch::Tensor x = images.index_select(0, index);  // (B,C,H,W) uint8
  if (!crop && !flip.defined()) return (x.to(torch::kFloat32).div_(255.0f) - mean).div_(std);
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const auto iopt = index.options();
  // Source row / column of every output pixel: (B,H) and (B,W).
  torch::Tensor rows = torch::arange(h, iopt).view({1, h}).expand({b, h});
  torch::Tensor cols = torch::arange(w, iopt).view({1, w}).expand({b, w});
  if (crop) {
    rows = rows + (dy.view({b, 1}) - padding);
    cols = cols + (dx.view({b, 1}) - padding);
  }
  if (flip.defined()) cols = torch::where(flip.view({b, 1}), cols.flip(/*dims=*/{1}), cols);
  torch::Tensor inside;
  if (crop) {
    inside = rows.ge(0).logical_and(rows.lt(h)).view({b, 1, h, 1}).logical_and(
        cols.ge(0).logical_and(cols.lt(w)).view({b, 1, 1, w}));
    rows = rows.clamp(0, h - 1);
    cols = cols.clamp(0, w - 1);
  }
  x = x.gather(/*dim=*/3, cols.reshape({b, 1, 1, w}).expand({b, c, h, w}))
          .gather(/*dim=*/2, rows.reshape({b, 1, h, 1}).expand({b, c, h, w}));
  torch::Tensor xf = x.to(torch::kFloat32);
  if (crop) xf = xf * inside;  // the zero padding, before normalization (as torchvision)
  return (xf.div_(255.0f) - mean).div_(std);
}

}  // namespace liondg
