#pragma once
// In-memory image classification data sets and their readers.
// Images are kept as uint8 (N,C,H,W); conversion to float happens per batch.
//
// Sources: a directory or an archive (.tar, .tar.gz, .zip) holding one of the
// supported layouts, detected from the file names: IDX (MNIST, Fashion-MNIST),
// CIFAR-10/100 binary, CIFAR-10/100 python (pickle), or an image folder
// ROOT/{train,test}/<class>/*.{jpg,jpeg,png}. Decoded sources are cached.

#include <torch/types.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
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
  std::string name;    // "fashion-mnist", "cifar10", "folder", ...
  /// "idx", "cifar10-binary", "cifar100-binary", "cifar10-python", "cifar100-python",
  /// "image-folder", "synthetic".
  std::string format;
  std::string path;    // where it was read from ("" for synthetic)
  std::string root;    // the layout's folder inside `path` ("" = `path` itself)
  std::vector<std::string> class_names;
  std::vector<std::string> coarse_class_names;  // CIFAR-100 superclasses (empty if none)
  Dataset train;
  Dataset val;   // held out from the official training split (empty unless requested)
  Dataset test;
  std::string cache_path;   // the decoded cache used or written ("" = none)
  bool from_cache = false;  // whether this load was served by the cache
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
  /// The split validation runs on: the held-out split if there is one, else the test split.
  const Dataset& eval_split() const { return val.size() > 0 ? val : test; }
  std::string eval_split_name() const { return val.size() > 0 ? "val" : "test"; }
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

/// How `load_dataset` reads a source.
struct LoadOptions {
  SyntheticOptions synthetic;  // for "synthetic"
  /// Resize every image of an image folder to (H, W) (bilinear, antialiased);
  /// without it, images of a different size than the first are an error.
  std::optional<std::pair<int64_t, int64_t>> resize;
  /// Use (read and write) the decoded cache for decoded or archived sources.
  bool use_cache = true;
  /// Cache directory; "" = default_cache_dir().
  std::string cache_dir;
  /// Decoding threads (0 = all cores).
  int threads = 0;
  /// Progress and cache messages (nullptr = silent).
  std::FILE* progress = nullptr;
};

/// Names accepted by `load_dataset`.
const std::vector<std::string>& dataset_names();

/// Default location of a named data set when --data is not given ("" if none):
/// fashion-mnist: /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist);
/// others: default_download_dir()/<name> if `liondg data fetch` put files there.
std::string default_data_path(const std::string& name);

/// $LIONDG_CACHE_DIR, else $XDG_CACHE_HOME/liondg, else ~/.cache/liondg.
std::string default_cache_dir();

/// Where `liondg data fetch` stores archives: $LIONDG_DATA_DIR, else
/// $XDG_DATA_HOME/liondg, else ~/.local/share/liondg.
std::string default_download_dir();

/// Parses "HxW" or "S" (square) into (H, W); throws UsageError naming `flag`.
std::pair<int64_t, int64_t> parse_image_size(const std::string& text, const std::string& flag);

/// Loads data set `name` (fashion-mnist | mnist | cifar10 | cifar100 | folder |
/// synthetic, or "auto": whatever `path` holds, named after its layout) from `path`: a directory or an archive holding any supported layout
/// of that data set ("" = the default path). The layout is detected; a source that
/// does not match `name` (e.g. 10 classes where cifar100 was asked for) is a
/// DataError saying what was found. Throws UsageError for an unknown name and
/// DataError naming the file for missing, truncated or malformed files.
DataSource load_dataset(const std::string& name, const std::string& path, const LoadOptions& options);
DataSource load_dataset(const std::string& name, const std::string& path, const SyntheticOptions& synthetic = {});

/// Moves `count` training images into `source.val`: stratified by class (each class
/// gives count * n_class / n_train images, largest remainders rounded up), chosen
/// by a seeded shuffle per class; both splits keep the original order.
void hold_out_validation(DataSource& source, int64_t count, uint64_t seed);

/// Images per class of a split (length num_classes).
std::vector<int64_t> class_counts(const Dataset& split, int64_t num_classes);

// ------------------------------------------------------------------ readers

/// Reads an IDX file (gzip-compressed or not; detected from the content) of
/// unsigned bytes (type 0x08). Returns a uint8 tensor shaped by the file's dims.
torch::Tensor read_idx(const std::string& path);
/// Same, from bytes already in memory (gzip-compressed or not); `what` names the source.
torch::Tensor parse_idx(const std::vector<uint8_t>& bytes, const std::string& what);

/// Gunzips `bytes` if they start with the gzip magic, else returns them unchanged.
std::vector<uint8_t> maybe_gunzip(std::vector<uint8_t> bytes, const std::string& what);

/// Reads an IDX image file (N,H,W) and label file (N) into a Dataset with C = 1.
Dataset read_idx_split(const std::string& images_path, const std::string& labels_path,
                       int64_t num_classes);

/// Reads CIFAR-10 binary batch files (records of 1 label byte + 3072 pixel bytes).
Dataset read_cifar10_binary(const std::vector<std::string>& files);

/// Reads a CIFAR-100 binary file (records of coarse byte, fine byte, 3072 pixel bytes).
Dataset read_cifar100_binary(const std::string& file);
/// Same, from bytes in memory; `what` names the source.
Dataset parse_cifar10_binary(const std::vector<uint8_t>& bytes, const std::string& what);
Dataset parse_cifar100_binary(const std::vector<uint8_t>& bytes, const std::string& what);

/// A learnable synthetic data set: each class is a fixed random smooth pattern
/// plus per-image Gaussian noise; deterministic given `options.seed`.
DataSource make_synthetic(const SyntheticOptions& options);

}  // namespace liondg
