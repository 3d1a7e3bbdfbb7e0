#pragma once
// Helpers for tests: temporary directories and small data files written on the fly.

#include <liondg/data/dataset.h>
#include <liondg/models/densenet_ds.h>
#include <liondg/models/resnet_ds.h>
#include <liondg/train/trainer.h>
#include <liondg/util/fs.h>

#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <unistd.h>
#include <fstream>
#include <string>
#include <vector>

namespace liondg::testing {

/// A fresh directory under the system temp dir, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/liondg-test-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() { remove_tree(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes, bool gzip = false) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

/// IDX bytes of unsigned-byte data with the given dims; payload[i] = (i * 7 + seed) % 256
/// unless `values` is given.
inline std::vector<uint8_t> idx_bytes(const std::vector<uint32_t>& dims, std::vector<uint8_t> values = {},
                                      uint8_t seed = 0) {
  std::vector<uint8_t> b{0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  size_t count = 1;
  for (uint32_t d : dims) {
    b.push_back(static_cast<uint8_t>(d >> 24));
    b.push_back(static_cast<uint8_t>(d >> 16));
    b.push_back(static_cast<uint8_t>(d >> 8));
    b.push_back(static_cast<uint8_t>(d));
    count *= d;
  }
  if (values.empty()) {
    for (size_t i = 0; i < count; ++i) values.push_back(static_cast<uint8_t>((i * 7 + seed) % 256));
  }
  b.insert(b.end(), values.begin(), values.end());
  return b;
}

/// A small synthetic data set for fast tests.
inline DataSource tiny_data(uint64_t seed = 0, int64_t classes = 4, int64_t size = 16, int64_t train = 256,
                            int64_t test = 128) {
  SyntheticOptions o;
  o.num_classes = classes;
  o.channels = 3;
  o.height = size;
  o.width = size;
  o.train_size = train;
  o.test_size = test;
  o.seed = seed;
  return make_synthetic(o);
}

/// Small DenseNet-DS / ResNet-DS of the default topology (3 blocks / stages, heads after 1 and 2).
inline DenseNetDSOptions tiny_densenet(int64_t classes = 4) {
  return DenseNetDSOptions(classes).growth_rate(6).stem_channels(12).block_layers({2, 2, 2});
}
inline ResNetDSOptions tiny_resnet(int64_t classes = 4) {
  return ResNetDSOptions(classes).widths({8, 16, 32}).blocks_per_stage({1, 1, 1});
}

/// Keeps every record a training run hands out.
struct RecordCollector : RecordSink {
  std::vector<StepRecord> steps;
  std::vector<EvalRecord> evals;
  void on_step(const StepRecord& r) override { steps.push_back(r); }
  void on_eval(const EvalRecord& e) override { evals.push_back(e); }
};

}  // namespace liondg::testing
