#pragma once
// In-memory image classification data sets and their readers.
// Images are kept as uint8 (N,C,H,W); conversion to float happens per batch.

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace liondg {

/// One split of a data set.
struct Dataset {
  torch::Tensor images;         // uint8 (N,C,H,W)
  torch::Tensor labels;         // int64 (N)
  torch::Tensor coarse_labels;  // int64 (N), undefined unless the source has them (CIFAR-100)
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

/// A data set as loaded: both splits plus metadata.
struct DataSource {
  std::string name;    // "fashion-mnist", "cifar10", ...
  std::string format;  // "idx", "cifar10-binary", "cifar100-binary", "synthetic"
  std::string path;    // where it was read from ("" for synthetic)
  std::vector<std::string> class_names;
  Dataset train;
  Dataset test;
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
  // Shape of one image.
  int64_t channels() const { return train.images.size(1); }
  int64_t height() const { return train.images.size(2); }
  int64_t width() const { return train.images.size(3); }
};

/// Options for the synthetic data set (tests and smoke runs).
struct SyntheticOptions {
  int64_t num_classes = 10;
  int64_t channels = 3;
  int64_t height = 32;
  int64_t width = 32;
  int64_t train_size = 2048;
  int64_t test_size = 512;
  uint64_t seed = 0;
  /// Standard deviation of the per-pixel noise, in units of the 0..255 scale.
  double noise = 40.0;
};

/// Names accepted by `load_dataset`.
const std::vector<std::string>& dataset_names();

/// Default location of a named data set when --data is not given ("" if none).
std::string default_data_path(const std::string& name);

/// Loads data set `name` (fashion-mnist | mnist | cifar10 | cifar100 | synthetic)
/// from `path` (a directory holding the official files; "" = the default path).
/// Throws UsageError for an unknown name and DataError naming the file for
/// missing, truncated or malformed files.
DataSource load_dataset(const std::string& name, const std::string& path,
                        const SyntheticOptions& synthetic = {});

// ------------------------------------------------------------------ readers

/// Reads an IDX file (gzip-compressed or not; detected from the content) of
/// unsigned bytes (type 0x08). Returns a uint8 tensor shaped by the file's dims.
torch::Tensor read_idx(const std::string& path);

/// Reads an IDX image file (N,H,W) and label file (N) into a Dataset with C = 1.
Dataset read_idx_split(const std::string& images_path, const std::string& labels_path,
                       int64_t num_classes);

/// Reads CIFAR-10 binary batch files (records of 1 label byte + 3072 pixel bytes).
Dataset read_cifar10_binary(const std::vector<std::string>& files);

/// Reads a CIFAR-100 binary file (records of coarse byte, fine byte, 3072 pixel bytes).
Dataset read_cifar100_binary(const std::string& file);

/// A learnable synthetic data set: each class is a fixed random smooth pattern
/// plus per-image Gaussian noise; deterministic given `options.seed`.
DataSource make_synthetic(const SyntheticOptions& options);

}  // namespace liondg
