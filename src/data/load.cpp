// Loading a data set by name: find the source, detect its layout, decode it
// (image folders in parallel), check it matches the name, and cache the result.

#include <liondg/data/archive.h>
#include <liondg/data/cache.h>
#include <liondg/data/dataset.h>
#include <liondg/data/fetch.h>
#include <liondg/data/image.h>
#include <liondg/data/pickle.h>
#include <liondg/errors.h>
#include <liondg/util/fs.h>

#include "names.h"

#include <torch/nn/functional/upsampling.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace liondg {
namespace {

constexpr int64_t kCifarPixels = 3 * 32 * 32;
constexpr double kProgressSeconds = 1.0;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

std::string home_dir() { return env_or("HOME", "/tmp"); }

std::string dirname_of(const std::string& rel) {
  const auto slash = rel.rfind('/');
  return slash == std::string::npos ? "" : rel.substr(0, slash);
}

std::string basename_of(const std::string& rel) {
  const auto slash = rel.rfind('/');
  return slash == std::string::npos ? rel : rel.substr(slash + 1);
}

std::string child(const std::string& root, const std::string& name) { return root.empty() ? name : root + "/" + name; }

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

bool has_image_extension(const std::string& name) {
  const std::string n = lower(name);
  for (const char* ext : {".jpg", ".jpeg", ".png"}) {
    const std::string e = ext;
    if (n.size() > e.size() && n.compare(n.size() - e.size(), e.size(), e) == 0) return true;
  }
  return false;
}

std::vector<std::string> text_lines(const std::vector<uint8_t>& bytes) {
  std::vector<std::string> lines;
  std::istringstream in(std::string(bytes.begin(), bytes.end()));
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

// ------------------------------------------------------------------ layouts

/// A supported layout found in a source tree.
struct Layout {
  std::string format;    // "idx", "cifar10-binary", ..., "image-folder"
  std::string root;      // folder of the layout inside the tree
  std::string evidence;  // the file that identified it
};

std::string describe_format(const std::string& format) {
  static const std::map<std::string, std::string> kNames{
      {"idx", "IDX files (MNIST / Fashion-MNIST)"},
      {"cifar10-binary", "CIFAR-10 binary files"},
      {"cifar100-binary", "CIFAR-100 binary files"},
      {"cifar10-python", "CIFAR-10 python (pickle) files"},
      {"cifar100-python", "CIFAR-100 python (pickle) files"},
      {"image-folder", "an image folder (train/<class>/*.jpg|png)"}};
  auto it = kNames.find(format);
  return it == kNames.end() ? format : it->second;
}

// The layouts a tree holds, shallowest first.
std::vector<Layout> detect_layouts(const SourceTree& tree) {
  std::vector<Layout> found;
  auto has = [&](const std::string& rel) { return tree.contains(rel) || tree.contains(rel + ".gz"); };
  std::set<std::string> seen_folder_roots;
  for (const auto& f : tree.files()) {
    const std::string dir = dirname_of(f);
    const std::string base = basename_of(f);
    if (base == "data_batch_1.bin" || base == "data_batch_1.bin.gz") {
      found.push_back({"cifar10-binary", dir, f});
    } else if (base == "data_batch_1" && tree.contains(child(dir, "batches.meta"))) {
      found.push_back({"cifar10-python", dir, f});
    } else if ((base == "train.bin" || base == "train.bin.gz") && has(child(dir, "test.bin"))) {
      found.push_back({"cifar100-binary", dir, f});
    } else if (base == "train" && tree.contains(child(dir, "test")) && tree.contains(child(dir, "meta"))) {
      found.push_back({"cifar100-python", dir, f});
    } else if (base == "train-images-idx3-ubyte" || base == "train-images-idx3-ubyte.gz") {
      found.push_back({"idx", dir, f});
    } else if (has_image_extension(base)) {
      // ROOT/train/<class>/.../image: find the "train" component.
      std::string prefix;
      size_t start = 0;
      while (true) {
        const size_t slash = f.find('/', start);
        if (slash == std::string::npos) break;
        const std::string part = f.substr(start, slash - start);
        if (part == "train" && f.find('/', slash + 1) != std::string::npos) {
          if (seen_folder_roots.insert(prefix).second) found.push_back({"image-folder", prefix, f});
          break;
        }
        prefix = child(prefix, part);
        start = slash + 1;
      }
    }
  }
  auto depth = [](const std::string& root) {
    return root.empty() ? 0 : 1 + static_cast<int>(std::count(root.begin(), root.end(), '/'));
  };
  std::stable_sort(found.begin(), found.end(),
                   [&](const Layout& a, const Layout& b) { return depth(a.root) < depth(b.root); });
  return found;
}

// Which layouts a data-set name accepts.
bool name_accepts(const std::string& name, const std::string& format) {
  if (name == "auto") return true;
  if (name == "folder") return format == "image-folder";
  if (name == "cifar10") return format == "cifar10-binary" || format == "cifar10-python" || format == "image-folder";
  if (name == "cifar100") return format == "cifar100-binary" || format == "cifar100-python" || format == "image-folder";
  if (name == "mnist" || name == "fashion-mnist") return format == "idx" || format == "image-folder";
  return false;
}

// The data-set name a layout implies when the caller asked for "auto".
std::string name_of_format(const std::string& format, const std::string& path) {
  if (format.rfind("cifar100", 0) == 0) return "cifar100";
  if (format.rfind("cifar10", 0) == 0) return "cifar10";
  if (format == "idx") return path.find("fashion") != std::string::npos ? "fashion-mnist" : "mnist";
  return "folder";
}

int64_t expected_classes(const std::string& name) {
  if (name == "cifar100") return 100;
  if (name == "folder" || name == "auto") return -1;
  return 10;
}

// ------------------------------------------------------------------ official layouts

std::string require(const SourceTree& tree, const std::string& root, const std::string& name) {
  for (const std::string& candidate : {child(root, name), child(root, name + ".gz")}) {
    if (tree.contains(candidate)) return candidate;
  }
  throw DataError("missing file '" + tree.describe(child(root, name)) + "' (or '" + name + ".gz') of the layout found in '" +
                  tree.path() + "'");
}

Dataset cat_splits(const std::vector<Dataset>& parts) {
  std::vector<torch::Tensor> images, labels, coarse;
  for (const auto& p : parts) {
    images.push_back(p.images);
    labels.push_back(p.labels);
    if (p.coarse_labels.defined()) coarse.push_back(p.coarse_labels);
  }
  Dataset d;
  d.images = torch::cat(images, 0).contiguous();
  d.labels = torch::cat(labels, 0);
  if (coarse.size() == parts.size()) d.coarse_labels = torch::cat(coarse, 0);
  return d;
}

Dataset idx_split(const SourceTree& tree, const std::string& root, const std::string& images_name,
                  const std::string& labels_name) {
  const std::string ip = require(tree, root, images_name), lp = require(tree, root, labels_name);
  torch::Tensor images = parse_idx(tree.read(ip), tree.describe(ip));
  torch::Tensor labels = parse_idx(tree.read(lp), tree.describe(lp));
  if (images.dim() != 3) {
    throw DataError("'" + tree.describe(ip) + "': expected an IDX image file with 3 dimensions (N,H,W), found " +
                    std::to_string(images.dim()));
  }
  if (labels.dim() != 1) {
    throw DataError("'" + tree.describe(lp) + "': expected an IDX label file with 1 dimension, found " +
                    std::to_string(labels.dim()));
  }
  if (images.size(0) != labels.size(0)) {
    throw DataError("'" + tree.describe(ip) + "' holds " + std::to_string(images.size(0)) + " images but '" +
                    tree.describe(lp) + "' holds " + std::to_string(labels.size(0)) + " labels");
  }
  Dataset d;
  d.images = images.unsqueeze(1).contiguous();
  d.labels = labels.to(torch::kInt64);
  if (d.labels.numel() > 0 && d.labels.max().item<int64_t>() >= 10) {
    throw DataError("'" + tree.describe(lp) + "': label " + std::to_string(d.labels.max().item<int64_t>()) +
                    " out of range; expected labels in [0, 10)");
  }
  return d;
}

Dataset pickle_split(const SourceTree& tree, const std::vector<std::string>& files) {
  std::vector<Dataset> parts;
  for (const auto& f : files) {
    const std::vector<uint8_t> bytes = maybe_gunzip(tree.read(f), tree.describe(f));
    CifarPickleBatch b = read_cifar_pickle_batch(bytes.data(), bytes.size(), tree.describe(f));
    const int64_t num_classes = b.coarse_labels.empty() ? 10 : 100;  // CIFAR-10 batches have no coarse labels
    for (const int64_t label : b.labels) {
      if (label >= num_classes) {
        throw DataError("'" + tree.describe(f) + "': label " + std::to_string(label) +
                        " out of range; expected labels in [0, " + std::to_string(num_classes) + ")");
      }
    }
    Dataset d;
    d.images = torch::from_blob(b.images.data(), {b.count, 3, 32, 32}, torch::kUInt8).clone();
    d.labels = torch::tensor(b.labels, torch::kInt64);
    if (!b.coarse_labels.empty()) d.coarse_labels = torch::tensor(b.coarse_labels, torch::kInt64);
    parts.push_back(d);
  }
  return cat_splits(parts);
}

std::vector<std::string> pickle_names(const SourceTree& tree, const std::string& file, const std::string& key) {
  const std::vector<uint8_t> bytes = tree.read(file);
  return read_cifar_pickle_names(bytes.data(), bytes.size(), key, tree.describe(file));
}

void load_official(const SourceTree& tree, const Layout& layout, DataSource& src) {
  const std::string& r = layout.root;
  if (layout.format == "idx") {
    src.train = idx_split(tree, r, "train-images-idx3-ubyte", "train-labels-idx1-ubyte");
    src.test = idx_split(tree, r, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");
    src.class_names = src.name == "fashion-mnist"
                          ? std::vector<std::string>{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                                     "Shirt", "Sneaker", "Bag", "Ankle boot"}
                          : numbered_names(10);
  } else if (layout.format == "cifar10-binary") {
    std::vector<Dataset> parts;
    for (int i = 1; i <= 5; ++i) {
      const std::string f = require(tree, r, "data_batch_" + std::to_string(i) + ".bin");
      parts.push_back(parse_cifar10_binary(tree.read(f), tree.describe(f)));
    }
    src.train = cat_splits(parts);
    const std::string t = require(tree, r, "test_batch.bin");
    src.test = parse_cifar10_binary(tree.read(t), tree.describe(t));
    const std::string meta = child(r, "batches.meta.txt");
    if (tree.contains(meta)) src.class_names = text_lines(tree.read(meta));
  } else if (layout.format == "cifar100-binary") {
    const std::string tr = require(tree, r, "train.bin"), te = require(tree, r, "test.bin");
    src.train = parse_cifar100_binary(tree.read(tr), tree.describe(tr));
    src.test = parse_cifar100_binary(tree.read(te), tree.describe(te));
    if (tree.contains(child(r, "fine_label_names.txt"))) {
      src.class_names = text_lines(tree.read(child(r, "fine_label_names.txt")));
    }
    if (tree.contains(child(r, "coarse_label_names.txt"))) {
      src.coarse_class_names = text_lines(tree.read(child(r, "coarse_label_names.txt")));
    }
  } else if (layout.format == "cifar10-python") {
    std::vector<std::string> files;
    for (int i = 1; i <= 5; ++i) files.push_back(require(tree, r, "data_batch_" + std::to_string(i)));
    src.train = pickle_split(tree, files);
    src.test = pickle_split(tree, {require(tree, r, "test_batch")});
    src.class_names = pickle_names(tree, child(r, "batches.meta"), "label_names");
  } else if (layout.format == "cifar100-python") {
    src.train = pickle_split(tree, {require(tree, r, "train")});
    src.test = pickle_split(tree, {require(tree, r, "test")});
    src.class_names = pickle_names(tree, child(r, "meta"), "fine_label_names");
    src.coarse_class_names = pickle_names(tree, child(r, "meta"), "coarse_label_names");
  }
  const bool is100 = layout.format.rfind("cifar100", 0) == 0;
  const bool is10 = layout.format.rfind("cifar10-", 0) == 0;
  if (is10 && src.class_names.size() != 10) {
    src.class_names = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  }
  if (is100 && src.class_names.size() != 100) src.class_names = numbered_names(100);
  if (is100 && src.coarse_class_names.size() != 20) src.coarse_class_names = numbered_names(20);
}

// ------------------------------------------------------------------ image folders

struct FolderItem {
  std::string file;  // relative path in the tree
  int64_t label = 0;
};

// Class folders of one split: "<root>/<split>/<class>/...". Files directly in
// the split folder, non-image files and empty class folders are errors; hidden
// files (".name") are ignored.
std::map<std::string, std::vector<std::string>> list_classes(const SourceTree& tree, const std::string& split_dir) {
  std::map<std::string, std::vector<std::string>> classes;
  const std::string prefix = split_dir + "/";
  for (const auto& d : tree.directories()) {
    if (d.rfind(prefix, 0) == 0 && d.find('/', prefix.size()) == std::string::npos) {
      const std::string name = d.substr(prefix.size());
      if (!name.empty() && name[0] != '.') classes[name];
    }
  }
  for (const auto& f : tree.files()) {
    if (f.rfind(prefix, 0) != 0) continue;
    const std::string rest = f.substr(prefix.size());
    if (basename_of(rest).rfind('.', 0) == 0) continue;
    const size_t slash = rest.find('/');
    if (slash == std::string::npos) {
      throw DataError("'" + tree.describe(f) + "' is not inside a class folder; expected " + split_dir +
                      "/<class>/<image>");
    }
    if (!has_image_extension(rest)) {
      throw DataError("'" + tree.describe(f) + "' is not an image file; expected .jpg, .jpeg or .png in class folders");
    }
    classes[rest.substr(0, slash)].push_back(f);
  }
  for (const auto& [name, files] : classes) {
    if (files.empty()) throw DataError("class folder '" + tree.describe(child(split_dir, name)) + "' holds no images");
  }
  return classes;
}

std::string size_text(int64_t h, int64_t w) { return std::to_string(h) + "x" + std::to_string(w); }

// uint8 (H,W,C) image resized to (h, w) with antialiased bilinear filtering.
Image resize_image(const Image& in, int64_t h, int64_t w) {
  torch::Tensor x = torch::from_blob(const_cast<uint8_t*>(in.pixels.data()), {1, in.height, in.width, in.channels},
                                     torch::kUInt8)
                        .permute({0, 3, 1, 2})
                        .to(torch::kFloat32);
  namespace F = torch::nn::functional;
  torch::Tensor y = F::interpolate(x, F::InterpolateFuncOptions()
                                          .size(std::vector<int64_t>{h, w})
                                          .mode(torch::kBilinear)
                                          .align_corners(false)
                                          .antialias(true));
  y = y.round().clamp(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
  Image out;
  out.height = h;
  out.width = w;
  out.channels = in.channels;
  out.pixels.assign(y.data_ptr<uint8_t>(), y.data_ptr<uint8_t>() + y.numel());
  return out;
}

// Decodes every item on `threads` threads. The first failing item (in item
// order, so the message does not depend on scheduling) is reported.
std::vector<Image> decode_all(const SourceTree& tree, const std::vector<FolderItem>& items,
                              const LoadOptions& options) {
  std::vector<Image> images(items.size());
  std::vector<std::string> errors(items.size());
  std::atomic<size_t> next{0}, done{0};
  std::atomic<bool> failed{false};
  const auto& resize = options.resize;
  auto worker = [&] {
    // No intra-op parallelism inside the decoding threads (resizing uses ATen).
    while (!failed.load()) {
      const size_t i = next.fetch_add(1);
      if (i >= items.size()) break;
      try {
        const std::vector<uint8_t> bytes = tree.read(items[i].file);
        Image img = decode_image(bytes.data(), bytes.size(), tree.describe(items[i].file));
        if (resize && (img.height != resize->first || img.width != resize->second)) {
          img = resize_image(img, resize->first, resize->second);
        }
        images[i] = std::move(img);
      } catch (const std::exception& e) {
        errors[i] = e.what();
        failed.store(true);
      }
      done.fetch_add(1);
    }
  };
  int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = std::max(1, std::min<int>(threads, static_cast<int>(items.size())));
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  if (options.progress != nullptr) {
    auto last = start;
    while (done.load() < items.size() && !failed.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      const auto now = std::chrono::steady_clock::now();
      if (std::chrono::duration<double>(now - last).count() >= kProgressSeconds) {
        std::fprintf(options.progress, "[data] decoding %s: %zu/%zu images\n", tree.path().c_str(), done.load(),
                     items.size());
        std::fflush(options.progress);
        last = now;
      }
    }
  }
  for (auto& t : pool) t.join();
  for (size_t i = 0; i < items.size(); ++i) {
    if (!errors[i].empty()) throw DataError(errors[i]);
  }
  if (options.progress != nullptr) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(options.progress, "[data] decoded %zu images from %s in %.2f s (%.0f images/s, %d threads)\n",
                 items.size(), tree.path().c_str(), s, static_cast<double>(items.size()) / std::max(s, 1e-9), threads);
  }
  return images;
}

void load_image_folder(const SourceTree& tree, const Layout& layout, const LoadOptions& options, DataSource& src) {
  const std::string train_dir = child(layout.root, "train");
  std::string test_dir = child(layout.root, "test");
  const auto& dirs = tree.directories();
  auto dir_exists_in_tree = [&](const std::string& d) { return std::binary_search(dirs.begin(), dirs.end(), d); };
  if (!dir_exists_in_tree(test_dir)) {
    if (!dir_exists_in_tree(child(layout.root, "val"))) {
      throw DataError("image folder '" + tree.describe(layout.root) + "' has train/ but no test/ (or val/) folder");
    }
    test_dir = child(layout.root, "val");
  }
  const auto train_classes = list_classes(tree, train_dir);
  const auto test_classes = list_classes(tree, test_dir);
  std::map<std::string, int64_t> index;
  for (const auto& [name, files] : train_classes) {
    index[name] = static_cast<int64_t>(src.class_names.size());
    src.class_names.push_back(name);
  }
  for (const auto& [name, files] : test_classes) {
    if (!index.count(name)) {
      throw DataError("class folder '" + tree.describe(child(test_dir, name)) + "' has no counterpart in '" +
                      tree.describe(train_dir) + "'");
    }
  }
  const int64_t want = expected_classes(src.name);
  if (want > 0 && src.num_classes() != want) {
    throw DataError("'" + tree.path() + "' holds an image folder with " + std::to_string(src.num_classes()) +
                    " classes, but --dataset " + src.name + " has " + std::to_string(want) +
                    " (use --dataset folder for other data)");
  }

  std::vector<FolderItem> items;
  size_t train_count = 0;
  for (const auto* classes : {&train_classes, &test_classes}) {
    for (const auto& [name, files] : *classes) {
      for (const auto& f : files) items.push_back({f, index.at(name)});
    }
    if (classes == &train_classes) train_count = items.size();
  }
  std::vector<Image> images = decode_all(tree, items, options);

  // One shape for all: the first training image's size (or --resize), and RGB if
  // any image is in colour (grey images are then replicated to 3 channels).
  const int64_t h = images.front().height, w = images.front().width;
  int64_t c = 1;
  for (const auto& img : images) c = std::max(c, img.channels);
  for (size_t i = 0; i < images.size(); ++i) {
    if (images[i].height != h || images[i].width != w) {
      throw DataError("'" + tree.describe(items[i].file) + "' is " + size_text(images[i].height, images[i].width) +
                      " but '" + tree.describe(items.front().file) + "' is " + size_text(h, w) +
                      "; images of one data set must have one size (pass --resize HxW to resize them)");
    }
    if (images[i].channels != c) images[i] = convert_channels(images[i], c);
  }
  auto pack = [&](size_t begin, size_t end) {
    const auto n = static_cast<int64_t>(end - begin);
    torch::Tensor hwc = torch::empty({n, h, w, c}, torch::kUInt8);
    std::vector<int64_t> labels;
    for (size_t i = begin; i < end; ++i) {
      std::memcpy(hwc[static_cast<int64_t>(i - begin)].data_ptr<uint8_t>(), images[i].pixels.data(),
                  images[i].pixels.size());
      labels.push_back(items[i].label);
    }
    Dataset d;
    d.images = hwc.permute({0, 3, 1, 2}).contiguous();
    d.labels = torch::tensor(labels, torch::kInt64);
    return d;
  };
  src.train = pack(0, train_count);
  src.test = pack(train_count, items.size());

  // Optional coarse labels: "<fine>\t<coarse>" per line, coarse order from
  // coarse_label_names.txt (else sorted).
  const std::string tsv = child(layout.root, "fine_to_coarse.tsv");
  if (tree.contains(tsv)) {
    std::map<std::string, std::string> coarse_of;
    for (const auto& line : text_lines(tree.read(tsv))) {
      const auto tab = line.find('\t');
      if (tab == std::string::npos) {
        throw DataError("'" + tree.describe(tsv) + "': line '" + line + "' is not '<fine>\\t<coarse>'");
      }
      coarse_of[line.substr(0, tab)] = line.substr(tab + 1);
    }
    const std::string names_file = child(layout.root, "coarse_label_names.txt");
    if (tree.contains(names_file)) {
      src.coarse_class_names = text_lines(tree.read(names_file));
    } else {
      std::set<std::string> unique;
      for (const auto& [fine, coarse] : coarse_of) unique.insert(coarse);
      src.coarse_class_names.assign(unique.begin(), unique.end());
    }
    std::vector<int64_t> coarse_index;
    for (const auto& fine : src.class_names) {
      auto it = coarse_of.find(fine);
      if (it == coarse_of.end()) throw DataError("'" + tree.describe(tsv) + "' has no coarse label for class '" + fine + "'");
      auto pos = std::find(src.coarse_class_names.begin(), src.coarse_class_names.end(), it->second);
      if (pos == src.coarse_class_names.end()) {
        throw DataError("'" + tree.describe(tsv) + "': coarse label '" + it->second + "' is not in '" +
                        tree.describe(names_file) + "'");
      }
      coarse_index.push_back(pos - src.coarse_class_names.begin());
    }
    torch::Tensor map = torch::tensor(coarse_index, torch::kInt64);
    src.train.coarse_labels = map.index_select(0, src.train.labels);
    src.test.coarse_labels = map.index_select(0, src.test.labels);
  }
}

// ------------------------------------------------------------------ whole source

DataSource load_tree(const std::string& name, const SourceTree& tree, const std::vector<Layout>& layouts,
                     const LoadOptions& options) {
  if (layouts.empty()) {
    throw DataError("'" + tree.path() + "' holds no supported data layout; expected IDX files " +
                    "(train-images-idx3-ubyte[.gz], ...), CIFAR binary (data_batch_1.bin / train.bin), CIFAR python " +
                    "(data_batch_1 + batches.meta / train + test + meta) or an image folder (ROOT/{train,test}/<class>/*.jpg|png)");
  }
  const auto it = std::find_if(layouts.begin(), layouts.end(), [&](const Layout& l) { return name_accepts(name, l.format); });
  if (it == layouts.end()) {
    const Layout& l = layouts.front();
    throw DataError("'" + tree.path() + "' holds " + describe_format(l.format) + " (found '" + tree.describe(l.evidence) +
                    "'), but --dataset " + name + " was asked for");
  }
  DataSource src;
  src.name = name == "auto" ? name_of_format(it->format, tree.path()) : name;
  src.format = it->format;
  src.path = tree.path();
  src.root = it->root;
  if (it->format == "image-folder") {
    load_image_folder(tree, *it, options, src);
  } else {
    load_official(tree, *it, src);
  }
  return src;
}

std::string cache_key(const std::string& name, const std::string& fingerprint, const LoadOptions& options) {
  std::string text = "liondg-data-cache|v" + std::to_string(kCacheVersion) + "|" + name + "|" + fingerprint;
  if (options.resize) text += "|resize=" + size_text(options.resize->first, options.resize->second);
  return bytes_digest(reinterpret_cast<const uint8_t*>(text.data()), text.size(), "sha256");
}

void note(const LoadOptions& o, const std::string& message) {
  if (o.progress == nullptr) return;
  std::fprintf(o.progress, "[data] %s\n", message.c_str());
  std::fflush(o.progress);
}

}  // namespace

// ------------------------------------------------------------------ public

const std::vector<std::string>& dataset_names() {
  static const std::vector<std::string> kNames{"fashion-mnist", "mnist", "cifar10", "cifar100", "folder", "synthetic"};
  return kNames;
}

std::string default_cache_dir() {
  if (const char* d = std::getenv("LIONDG_CACHE_DIR"); d != nullptr && *d != '\0') return d;
  return join_path(env_or("XDG_CACHE_HOME", join_path(home_dir(), ".cache")), "liondg");
}

std::string default_download_dir() {
  if (const char* d = std::getenv("LIONDG_DATA_DIR"); d != nullptr && *d != '\0') return d;
  return join_path(env_or("XDG_DATA_HOME", join_path(home_dir(), ".local/share")), "liondg");
}

std::string default_data_path(const std::string& name) {
  if (name == "fashion-mnist") return "/usr/share/datasets/fashion-mnist";
  if (name == "folder" || name == "synthetic") return "";
  // Where `liondg data fetch` puts it: the directory, or the official archive in it.
  const std::string fetched = join_path(default_download_dir(), name);
  if (!is_directory(fetched)) return "";
  const bool cifar = name == "cifar10" || name == "cifar100";
  for (const char* format : {"binary", "python"}) {
    if (!cifar) break;
    for (const auto& f : official_files(name, format)) {
      const std::string archive = join_path(fetched, f.file_name);
      if (f.file_name.find(".tar") != std::string::npos && is_regular_file(archive)) return archive;
    }
  }
  return fetched;
}

std::pair<int64_t, int64_t> parse_image_size(const std::string& text, const std::string& flag) {
  const auto x = text.find('x');
  try {
    size_t used = 0;
    const std::string hs = x == std::string::npos ? text : text.substr(0, x);
    const std::string ws = x == std::string::npos ? text : text.substr(x + 1);
    const long long h = std::stoll(hs, &used);
    if (used != hs.size()) throw std::invalid_argument(hs);
    const long long w = std::stoll(ws, &used);
    if (used != ws.size()) throw std::invalid_argument(ws);
    if (h > 0 && w > 0 && h <= 16384 && w <= 16384) return {h, w};
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " '" + text + "': expected HxW or S with sizes in [1, 16384] (e.g. 32x32)");
}

DataSource load_dataset(const std::string& name, const std::string& path, const SyntheticOptions& synthetic) {
  LoadOptions options;
  options.synthetic = synthetic;
  return load_dataset(name, path, options);
}

DataSource load_dataset(const std::string& name, const std::string& path_in, const LoadOptions& options) {
  if (name == "synthetic") return make_synthetic(options.synthetic);
  if (name != "auto" && std::find(dataset_names().begin(), dataset_names().end(), name) == dataset_names().end()) {
    std::string known;
    for (const auto& n : dataset_names()) known += (known.empty() ? "" : ", ") + n;
    throw UsageError("unknown dataset '" + name + "'; expected one of: " + known);
  }
  const std::string path = path_in.empty() ? default_data_path(name) : path_in;
  if (path.empty() && name == "auto") throw UsageError("a data path is required to detect its data set");
  if (path.empty()) {
    throw UsageError("dataset '" + name + "' has no default location; pass --data PATH (a directory or archive)" +
                     (name == "folder" ? std::string() : " or run `liondg data fetch " + name + "`"));
  }
  if (!is_directory(path) && !is_regular_file(path)) {
    throw DataError("data path '" + path + "' for dataset '" + name + "' does not exist" +
                    (name == "fashion-mnist" ? " (install the Debian package dataset-fashion-mnist)" : ""));
  }

  // Archives are fingerprinted without opening them, so a cached load never decompresses.
  const bool archive = is_regular_file(path);
  std::optional<SourceTree> tree;
  std::vector<Layout> layouts;
  std::string fingerprint;
  bool cacheable = archive;
  if (archive) {
    if (options.use_cache) fingerprint = source_fingerprint(path);
  } else {
    tree = SourceTree::open(path);
    layouts = detect_layouts(*tree);
    for (const auto& l : layouts) {
      if (name_accepts(name, l.format)) {
        cacheable = l.format == "image-folder" || l.format.find("python") != std::string::npos;
        break;
      }
    }
    if (cacheable && options.use_cache) fingerprint = tree_fingerprint(*tree);
  }

  std::string cache_file;
  if (cacheable && options.use_cache) {
    const std::string key = cache_key(name, fingerprint, options);
    const std::string dir = options.cache_dir.empty() ? default_cache_dir() : options.cache_dir;
    std::string stem = path;
    while (stem.size() > 1 && stem.back() == '/') stem.pop_back();
    cache_file = cache_file_path(dir, basename_of(stem), key);
    std::string why;
    if (auto cached = read_cache(cache_file, key, &why)) {
      cached->path = path;
      cached->cache_path = cache_file;
      cached->from_cache = true;
      return *cached;
    }
    if (why != "no cache file") note(options, "cache '" + cache_file + "' not used (" + why + "); rebuilding it");
    if (!tree) {
      tree = SourceTree::open(path);
      layouts = detect_layouts(*tree);
    }
    DataSource src = load_tree(name, *tree, layouts, options);
    if (make_directories(dir)) {
      try {
        write_cache(cache_file, key, src);
        src.cache_path = cache_file;
        note(options, "cached the decoded data set in '" + cache_file + "'");
      } catch (const DataError& e) {
        note(options, std::string("warning: ") + e.what() + "; continuing without a cache");
      }
    } else {
      note(options, "warning: cannot create cache directory '" + dir + "'; continuing without a cache");
    }
    return src;
  }
  if (!tree) {
    tree = SourceTree::open(path);
    layouts = detect_layouts(*tree);
  }
  return load_tree(name, *tree, layouts, options);
}

std::vector<int64_t> class_counts(const Dataset& split, int64_t num_classes) {
  std::vector<int64_t> counts(static_cast<size_t>(std::max<int64_t>(num_classes, 0)), 0);
  if (split.size() == 0) return counts;
  torch::Tensor b = torch::bincount(split.labels, /*weights=*/{}, /*minlength=*/num_classes);
  for (int64_t k = 0; k < num_classes && k < b.size(0); ++k) counts[static_cast<size_t>(k)] = b[k].item<int64_t>();
  return counts;
}

void hold_out_validation(DataSource& source, int64_t count, uint64_t seed) {
  const int64_t n = source.train.size();
  TORCH_CHECK_VALUE(count >= 0, "--val-split must be >= 0, got ", count);
  if (count == 0) return;
  TORCH_CHECK_VALUE(count < n, "--val-split ", count, " must be smaller than the training split (", n, " images)");
  const int64_t k = source.num_classes();
  const std::vector<int64_t> counts = class_counts(source.train, k);
  // Largest-remainder apportionment of `count` over the classes.
  std::vector<int64_t> take(static_cast<size_t>(k));
  std::vector<std::pair<double, int64_t>> remainders;
  int64_t assigned = 0;
  for (int64_t c = 0; c < k; ++c) {
    const double exact = static_cast<double>(count) * static_cast<double>(counts[c]) / static_cast<double>(n);
    take[c] = static_cast<int64_t>(exact);
    assigned += take[c];
    remainders.push_back({exact - static_cast<double>(take[c]), c});
  }
  std::stable_sort(remainders.begin(), remainders.end(), [](auto& a, auto& b) { return a.first > b.first; });
  for (size_t i = 0; assigned < count && i < remainders.size(); ++i) {
    const int64_t c = remainders[i].second;
    if (take[c] < counts[c]) {
      ++take[c];
      ++assigned;
    }
  }
  // Per class, a seeded Fisher-Yates shuffle of its indices; the first take[c] go to val.
  std::vector<std::vector<int64_t>> members(static_cast<size_t>(k));
  const auto labels = source.train.labels.contiguous();
  const int64_t* lab = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) members[lab[i]].push_back(i);
  std::mt19937_64 rng(seed);
  std::vector<bool> is_val(static_cast<size_t>(n), false);
  for (int64_t c = 0; c < k; ++c) {
    auto& m = members[c];
    for (size_t i = m.size(); i > 1; --i) std::swap(m[i - 1], m[static_cast<size_t>(rng() % i)]);
    for (int64_t j = 0; j < take[c]; ++j) is_val[m[j]] = true;
  }
  std::vector<int64_t> train_idx, val_idx;
  for (int64_t i = 0; i < n; ++i) (is_val[i] ? val_idx : train_idx).push_back(i);
  auto subset = [](const Dataset& d, const std::vector<int64_t>& idx) {
    torch::Tensor index = torch::tensor(idx, torch::kInt64);
    Dataset out;
    out.images = d.images.index_select(0, index).contiguous();
    out.labels = d.labels.index_select(0, index);
    if (d.coarse_labels.defined()) out.coarse_labels = d.coarse_labels.index_select(0, index);
    return out;
  };
  source.val = subset(source.train, val_idx);
  source.train = subset(source.train, train_idx);
}

}  // namespace liondg
