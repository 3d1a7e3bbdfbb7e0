// Data sources: image folders in directories and archives, layout detection,
// the decoded cache, held-out validation, random crops and prefetching.

#include "expect.h"
#include "fixtures.h"

#include <liondg/data/archive.h>
#include <liondg/data/batcher.h>
#include <liondg/data/cache.h>
#include <liondg/data/dataset.h>
#include <liondg/data/image.h>
#include <liondg/errors.h>

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <sys/stat.h>


#include <functional>
#include <map>

namespace liondg {
namespace {

using testing::TempDir;
using testing::write_bytes;

using testing::expect_data_error;

// A deterministic test image: a smooth ramp (so JPEG keeps it close), offset by seed.
Image pattern(int64_t h, int64_t w, int64_t c, int seed) {
  Image img;
  img.height = h;
  img.width = w;
  img.channels = c;
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t k = 0; k < c; ++k)
        img.pixels.push_back(static_cast<uint8_t>(std::min<int64_t>(255, 10 + (seed * 7) % 50 + y * 5 + x * 3 + k * 30)));
  return img;
}

// uint8 (C,H,W) tensor of an image.
torch::Tensor chw(const Image& img) {
  return torch::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, img.channels},
                          torch::kUInt8)
      .permute({2, 0, 1})
      .clone();
}

/// An image-folder fixture: files by relative path, plus the expected pixels.
struct FolderFixture {
  std::map<std::string, std::vector<uint8_t>> files;  // relative path -> bytes
  std::map<std::string, Image> images;                // relative path -> encoder input
};

// ROOT/{train,test}/<class>/NNNN.ext with `per_class` training and 1 test image per class.
FolderFixture make_folder(const std::vector<std::string>& classes, int per_class, const std::string& ext,
                          const std::string& root = "", int64_t size = 8) {
  FolderFixture f;
  int seed = 0;
  for (const char* split : {"train", "test"}) {
    const int n = std::string(split) == "train" ? per_class : 1;
    for (const auto& cls : classes) {
      for (int i = 0; i < n; ++i) {
        const Image img = pattern(size, size, 3, seed++);
        char name[16];
        std::snprintf(name, sizeof name, "%04d", i);
        const std::string rel = (root.empty() ? "" : root + "/") + split + "/" + cls + "/" + name + ext;
        f.files[rel] = ext == ".png" ? encode_png(img) : encode_jpeg(img, /*quality=*/95);
        f.images[rel] = img;
      }
    }
  }
  return f;
}

void write_tree(const std::string& dir, const std::map<std::string, std::vector<uint8_t>>& files) {
  for (const auto& [rel, bytes] : files) {
    const auto slash = rel.rfind('/');
    if (slash != std::string::npos) {
      ASSERT_TRUE(make_directories(dir + "/" + rel.substr(0, slash)));
    }
    write_bytes(dir + "/" + rel, bytes);
  }
}

// Writes `files` into an archive: "tar", "tar.gz" or "zip".
void write_archive(const std::string& path, const std::map<std::string, std::vector<uint8_t>>& files,
                   const std::string& kind) {
  archive* a = archive_write_new();
  if (kind == "zip") {
    archive_write_set_format_zip(a);
  } else {
    archive_write_set_format_pax_restricted(a);
    if (kind == "tar.gz") archive_write_add_filter_gzip(a);
  }
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK) << archive_error_string(a);
  for (const auto& [rel, bytes] : files) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, rel.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(bytes.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK) << archive_error_string(a);
    archive_write_data(a, bytes.data(), bytes.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
}

LoadOptions cached_in(const TempDir& cache) {
  LoadOptions o;
  o.cache_dir = cache.file("cache");
  return o;
}

std::vector<std::string> list_dir(const std::string& dir) {
  return is_directory(dir) ? list_directory(dir) : std::vector<std::string>{};
}

// Checks labels and pixels of a loaded folder against the fixture (exact for PNG).
void expect_matches(const DataSource& src, const FolderFixture& f, const std::vector<std::string>& classes,
                    int per_class, double max_abs_error) {
  ASSERT_EQ(src.class_names, classes);
  ASSERT_EQ(src.train.size(), static_cast<int64_t>(classes.size()) * per_class);
  ASSERT_EQ(src.test.size(), static_cast<int64_t>(classes.size()));
  // Files are read in sorted order, class by class.
  int64_t i = 0;
  for (const auto& [rel, img] : f.images) {
    if (rel.find("train/") == std::string::npos) continue;
    const std::string cls = rel.substr(rel.find("train/") + 6, rel.rfind('/') - rel.find("train/") - 6);
    const int64_t label = std::find(classes.begin(), classes.end(), cls) - classes.begin();
    EXPECT_EQ(src.train.labels[i].item<int64_t>(), label) << rel;
    const double err =
        (src.train.images[i].to(torch::kInt32) - chw(img).to(torch::kInt32)).abs().max().item<int>();
    EXPECT_LE(err, max_abs_error) << rel;
    ++i;
  }
}

const std::vector<std::string> kClasses{"bird", "cat", "dog"};

TEST(ImageFolder, PngDirectoryLoadsExactPixelsAndSortedClassLabels) {
  TempDir dir, cache;
  const FolderFixture f = make_folder({"dog", "bird", "cat"}, 3, ".png");
  write_tree(dir.path(), f.files);
  DataSource src = load_dataset("folder", dir.path(), cached_in(cache));
  EXPECT_EQ(src.format, "image-folder");
  EXPECT_EQ(src.train.images.sizes(), torch::IntArrayRef({9, 3, 8, 8}));
  expect_matches(src, f, kClasses, 3, /*max_abs_error=*/0);
}

TEST(ImageFolder, JpegWithinToleranceOfTheEncoderInput) {
  TempDir dir, cache;
  const FolderFixture f = make_folder(kClasses, 2, ".jpg", "", /*size=*/16);
  write_tree(dir.path(), f.files);
  DataSource src = load_dataset("folder", dir.path(), cached_in(cache));
  // Quality 95, no chroma subsampling, smooth pattern: small errors only.
  expect_matches(src, f, kClasses, 2, /*max_abs_error=*/6);
  // The mean error is far smaller: test/bird/0000.jpg is the first test image.
  const Image& bird = f.images.at("test/bird/0000.jpg");
  EXPECT_LT((src.test.images[0].to(torch::kFloat32) - chw(bird).to(torch::kFloat32)).abs().mean().item<double>(), 1.5);
}

TEST(ImageFolder, TarTarGzAndZipGiveTheSameTensorsAsTheDirectory) {
  TempDir dir, cache;
  const FolderFixture f = make_folder(kClasses, 2, ".png", "mydata");
  write_tree(dir.file("tree"), f.files);
  LoadOptions no_cache;
  no_cache.use_cache = false;
  const DataSource ref = load_dataset("folder", dir.file("tree"), no_cache);
  EXPECT_EQ(ref.root, "mydata");
  for (const std::string kind : {"tar", "tar.gz", "zip"}) {
    const std::string path = dir.file("data." + kind);
    write_archive(path, f.files, kind);
    const DataSource src = load_dataset("folder", path, cached_in(cache));
    EXPECT_EQ(src.root, "mydata") << kind;
    EXPECT_TRUE(torch::equal(src.train.images, ref.train.images)) << kind;
    EXPECT_TRUE(torch::equal(src.train.labels, ref.train.labels)) << kind;
    EXPECT_TRUE(torch::equal(src.test.images, ref.test.images)) << kind;
    EXPECT_EQ(src.class_names, ref.class_names) << kind;
  }
}

TEST(ImageFolder, CoarseLabelsFromFineToCoarseMetadata) {
  TempDir dir, cache;
  FolderFixture f = make_folder(kClasses, 1, ".png");
  const std::string tsv = "bird\tanimal_b\ncat\tanimal_a\ndog\tanimal_a\n";
  f.files["fine_to_coarse.tsv"] = std::vector<uint8_t>(tsv.begin(), tsv.end());
  const std::string names = "animal_b\nanimal_a\n";
  f.files["coarse_label_names.txt"] = std::vector<uint8_t>(names.begin(), names.end());
  write_tree(dir.path(), f.files);
  DataSource src = load_dataset("folder", dir.path(), cached_in(cache));
  EXPECT_EQ(src.coarse_class_names, (std::vector<std::string>{"animal_b", "animal_a"}));
  ASSERT_TRUE(src.train.coarse_labels.defined());
  EXPECT_TRUE(torch::equal(src.train.coarse_labels, src.train.labels.clamp_max(1)));
  // bird -> 0 (animal_b), cat -> 1, dog -> 1.
  EXPECT_EQ(src.test.coarse_labels[0].item<int64_t>(), 0);
  EXPECT_EQ(src.test.coarse_labels[2].item<int64_t>(), 1);
}

TEST(ImageFolder, GreyImagesAmongColourAreReplicatedAndResizeIsOptional) {
  TempDir dir, cache;
  FolderFixture f = make_folder(kClasses, 1, ".png");
  Image grey = pattern(8, 8, 1, 5);
  f.files["train/cat/0000.png"] = encode_png(grey);
  write_tree(dir.path(), f.files);
  DataSource src = load_dataset("folder", dir.path(), cached_in(cache));
  EXPECT_EQ(src.channels(), 3);
  EXPECT_TRUE(torch::equal(src.train.images[1][0], src.train.images[1][2]));

  // A 12x12 image among 8x8 ones: an error naming the file and --resize, unless resizing.
  f.files["train/dog/0000.png"] = encode_png(pattern(12, 12, 3, 9));
  write_tree(dir.path(), f.files);
  expect_data_error([&] { load_dataset("folder", dir.path(), cached_in(cache)); },
                    {"train/dog/0000.png", "12x12", "8x8", "--resize"});
  LoadOptions resize = cached_in(cache);
  resize.resize = std::make_pair<int64_t, int64_t>(8, 8);
  EXPECT_EQ(load_dataset("folder", dir.path(), resize).train.images.sizes(), torch::IntArrayRef({3, 3, 8, 8}));
  resize.resize = std::make_pair<int64_t, int64_t>(4, 6);
  EXPECT_EQ(load_dataset("folder", dir.path(), resize).test.images.sizes(), torch::IntArrayRef({3, 3, 4, 6}));
}

// ------------------------------------------------------------------ bad input

TEST(ImageFolder, BadFoldersAreRejectedNamingTheFile) {
  TempDir cache;
  LoadOptions o = cached_in(cache);
  {  // empty class folder
    TempDir dir;
    write_tree(dir.path(), make_folder(kClasses, 1, ".png").files);
    ASSERT_TRUE(make_directories(dir.file("train/emu")));
    expect_data_error([&] { load_dataset("folder", dir.path(), o); }, {"train/emu", "holds no images"});
  }
  {  // a non-image file in a class folder
    TempDir dir;
    auto files = make_folder(kClasses, 1, ".png").files;
    files["train/cat/notes.txt"] = {'h', 'i'};
    write_tree(dir.path(), files);
    expect_data_error([&] { load_dataset("folder", dir.path(), o); }, {"train/cat/notes.txt", "not an image"});
  }
  {  // a corrupt PNG and a truncated JPEG
    TempDir dir;
    auto files = make_folder(kClasses, 1, ".png").files;
    files["train/cat/0000.png"].resize(40);
    write_tree(dir.path(), files);
    expect_data_error([&] { load_dataset("folder", dir.path(), o); }, {"train/cat/0000.png"});
    auto jpgs = make_folder(kClasses, 1, ".jpg").files;
    jpgs["test/dog/0000.jpg"].resize(jpgs["test/dog/0000.jpg"].size() / 2);
    TempDir dir2;
    write_tree(dir2.path(), jpgs);
    expect_data_error([&] { load_dataset("folder", dir2.path(), o); }, {"test/dog/0000.jpg"});
  }
  {  // a test class the training split lacks; no test folder
    TempDir dir;
    auto files = make_folder(kClasses, 1, ".png").files;
    files["test/emu/0000.png"] = encode_png(pattern(8, 8, 3, 1));
    write_tree(dir.path(), files);
    expect_data_error([&] { load_dataset("folder", dir.path(), o); }, {"test/emu", "no counterpart"});
    TempDir dir2;
    std::map<std::string, std::vector<uint8_t>> train_only;
    for (const auto& [rel, b] : make_folder(kClasses, 1, ".png").files)
      if (rel.rfind("train/", 0) == 0) train_only[rel] = b;
    write_tree(dir2.path(), train_only);
    expect_data_error([&] { load_dataset("folder", dir2.path(), o); }, {"no test/"});
  }
  // Nothing half-written stays in the cache directory after these failures.
  for (const auto& name : list_dir(cache.file("cache"))) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
}

TEST(Archive, TruncatedArchivesAndEscapingMembersAreRejected) {
  TempDir dir, cache;
  const auto files = make_folder(kClasses, 4, ".png").files;
  const std::string good = dir.file("good.tar.gz");
  write_archive(good, files, "tar.gz");
  std::ifstream in(good, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (double frac : {0.3, 0.6, 0.9}) {
    const std::string cut = dir.file("cut.tar.gz");
    write_bytes(cut, std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<long>(bytes.size() * frac)));
    expect_data_error([&] { load_dataset("folder", cut, cached_in(cache)); }, {"cut.tar.gz"});
  }
  write_bytes(dir.file("noise.zip"), std::vector<uint8_t>(300, 0x5a));
  expect_data_error([&] { load_dataset("folder", dir.file("noise.zip"), cached_in(cache)); }, {"noise.zip"});

  for (const std::string bad : {"../evil/train/cat/0000.png", "/abs/train/cat/0000.png", "a/../../b.png"}) {
    auto evil = files;
    evil[bad] = encode_png(pattern(8, 8, 3, 0));
    write_archive(dir.file("evil.tar"), evil, "tar");
    expect_data_error([&] { load_dataset("folder", dir.file("evil.tar"), cached_in(cache)); },
                      {"evil.tar", "escape the archive root"});
  }
  EXPECT_EQ(safe_member_path("./a//b/./c", "x.tar"), "a/b/c");
  for (const auto& name : list_dir(cache.file("cache"))) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
}

// ------------------------------------------------------------------ detection

TEST(Detection, LayoutsAreDetectedAndMismatchesSayWhatWasFound) {
  TempDir dir, cache;
  const LoadOptions o = cached_in(cache);
  // CIFAR-10 binary as distributed (a folder inside a .tar.gz).
  std::map<std::string, std::vector<uint8_t>> cifar;
  std::vector<uint8_t> batch;
  for (int i = 0; i < 4; ++i) {
    batch.push_back(static_cast<uint8_t>(i % 10));
    for (int p = 0; p < 3072; ++p) batch.push_back(static_cast<uint8_t>((i + p) % 256));
  }
  for (int i = 1; i <= 5; ++i) cifar["cifar-10-batches-bin/data_batch_" + std::to_string(i) + ".bin"] = batch;
  cifar["cifar-10-batches-bin/test_batch.bin"] = batch;
  write_archive(dir.file("cifar-10-binary.tar.gz"), cifar, "tar.gz");
  const DataSource c10 = load_dataset("cifar10", dir.file("cifar-10-binary.tar.gz"), o);
  EXPECT_EQ(c10.format, "cifar10-binary");
  EXPECT_EQ(c10.root, "cifar-10-batches-bin");
  EXPECT_EQ(c10.train.size(), 20);
  EXPECT_EQ(c10.train.images[1][0][0][2].item<int>(), 3);
  EXPECT_EQ(load_dataset("auto", dir.file("cifar-10-binary.tar.gz"), o).name, "cifar10");
  expect_data_error([&] { load_dataset("cifar100", dir.file("cifar-10-binary.tar.gz"), o); },
                    {"CIFAR-10 binary", "--dataset cifar100", "data_batch_1.bin"});

  // An image folder with 3 classes is not CIFAR-10.
  write_archive(dir.file("three.zip"), make_folder(kClasses, 1, ".png").files, "zip");
  expect_data_error([&] { load_dataset("cifar10", dir.file("three.zip"), o); }, {"3 classes", "--dataset folder"});
  EXPECT_EQ(load_dataset("auto", dir.file("three.zip"), o).name, "folder");
  // Nothing recognizable.
  TempDir empty;
  write_bytes(empty.file("readme.txt"), {'x'});
  expect_data_error([&] { load_dataset("folder", empty.path(), o); }, {"no supported data layout"});
}

// ------------------------------------------------------------------ cache

TEST(Cache, RoundTripsAndIsRebuiltWhenTheSourceChangesOrIsCorrupt) {
  TempDir dir, cache;
  const LoadOptions o = cached_in(cache);
  auto files = make_folder(kClasses, 2, ".png");
  const std::string archive = dir.file("d.tar.gz");
  write_archive(archive, files.files, "tar.gz");

  const DataSource first = load_dataset("folder", archive, o);
  EXPECT_FALSE(first.from_cache);
  ASSERT_FALSE(first.cache_path.empty());
  const DataSource second = load_dataset("folder", archive, o);
  EXPECT_TRUE(second.from_cache);
  EXPECT_EQ(second.cache_path, first.cache_path);
  EXPECT_TRUE(torch::equal(second.train.images, first.train.images));
  EXPECT_TRUE(torch::equal(second.test.labels, first.test.labels));
  EXPECT_EQ(second.class_names, first.class_names);

  // Corrupt one payload byte: detected by the checksum and rebuilt, not trusted.
  {
    std::fstream f(first.cache_path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-5, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    f.seekp(-5, std::ios::end);
    c = static_cast<char>(c ^ 0x40);
    f.write(&c, 1);
  }
  std::string why;
  EXPECT_FALSE(read_cache(first.cache_path, /*key=*/"", &why).has_value());
  const DataSource rebuilt = load_dataset("folder", archive, o);
  EXPECT_FALSE(rebuilt.from_cache);
  EXPECT_TRUE(torch::equal(rebuilt.train.images, first.train.images));
  EXPECT_TRUE(load_dataset("folder", archive, o).from_cache);

  // A cache file from another format version is rebuilt.
  {
    std::fstream f(first.cache_path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    const uint32_t old = kCacheVersion + 7;
    f.write(reinterpret_cast<const char*>(&old), sizeof old);
  }
  EXPECT_FALSE(load_dataset("folder", archive, o).from_cache);

  // A changed source gets a new key: new pixels, never the stale cache.
  files.files["train/cat/0001.png"] = encode_png(pattern(8, 8, 3, 99));
  write_archive(archive, files.files, "tar.gz");
  const DataSource changed = load_dataset("folder", archive, o);
  EXPECT_FALSE(changed.from_cache);
  EXPECT_NE(changed.cache_path, first.cache_path);
  EXPECT_TRUE(torch::equal(changed.train.images[3], chw(pattern(8, 8, 3, 99))));

  // Directories are keyed by their files' names, sizes and modification times.
  write_tree(dir.file("tree"), files.files);
  EXPECT_FALSE(load_dataset("folder", dir.file("tree"), o).from_cache);
  EXPECT_TRUE(load_dataset("folder", dir.file("tree"), o).from_cache);
  files.files["test/dog/0000.png"] = encode_png(pattern(8, 8, 3, 42));
  write_tree(dir.file("tree"), files.files);
  const DataSource dir_changed = load_dataset("folder", dir.file("tree"), o);
  EXPECT_FALSE(dir_changed.from_cache);
  EXPECT_TRUE(torch::equal(dir_changed.test.images[2], chw(pattern(8, 8, 3, 42))));
}

TEST(Cache, EmptySplitsAndHostileHeadersAreHandled) {
  // A source with an empty test split round-trips (the checksum once skipped empty tensors wrongly).
  TempDir dir;
  DataSource src = testing::tiny_data(/*seed=*/1, /*classes=*/3, /*size=*/4, /*train=*/600, /*test=*/3);
  // Fresh empty tensors (null data pointers, as a reader of an empty file makes them).
  src.test.images = torch::empty({0, 3, 4, 4}, torch::kUInt8);
  src.test.labels = torch::empty({0}, torch::kInt64);
  const std::string file = dir.file("c.ldgcache");
  write_cache(file, "key", src);
  std::string why;
  const auto back = read_cache(file, "key", &why);
  ASSERT_TRUE(back.has_value()) << why;
  EXPECT_EQ(back->test.size(), 0);
  EXPECT_TRUE(torch::equal(back->train.images, src.train.images));
  // Header fields that are floats or negative: rejected, never cast (UBSan in CI would
  // report a float-to-integer cast). Same-length edits, so the header stays parseable.
  const std::string payload = "\"payload_bytes\":" + std::to_string(600 * 3 * 16 + 600 * 8);  // 33600
  const std::vector<std::pair<std::string, std::string>> edits{{payload, "\"payload_bytes\":1e300"},
                                                               {"\"count\":600", "\"count\":9e9"},
                                                               {"\"count\":600", "\"count\":-1 "}};
  for (const auto& [from, to] : edits) {
    std::ifstream in(file, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = bytes.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    ASSERT_EQ(from.size(), to.size());
    bytes.replace(at, from.size(), to);
    write_bytes(dir.file("h.ldgcache"), std::vector<uint8_t>(bytes.begin(), bytes.end()));
    EXPECT_FALSE(read_cache(dir.file("h.ldgcache"), "key", &why).has_value()) << to;
  }
}

TEST(Cache, UnwritableCacheDirectoryOnlyWarns) {
  TempDir dir;
  write_archive(dir.file("d.zip"), make_folder(kClasses, 1, ".png").files, "zip");
  write_bytes(dir.file("not-a-dir"), {'x'});
  LoadOptions o;
  o.cache_dir = dir.file("not-a-dir/cache");
  const DataSource src = load_dataset("folder", dir.file("d.zip"), o);
  EXPECT_EQ(src.train.size(), 3);
  EXPECT_TRUE(src.cache_path.empty());
}

// ------------------------------------------------------------------ splits and batches

TEST(ValSplit, StratifiedSeededAndDisjoint) {
  DataSource a = testing::tiny_data(1);  // balanced synthetic classes
  const int64_t n = a.train.size();
  const auto before = class_counts(a.train, a.num_classes());
  DataSource b = a;
  hold_out_validation(a, 50, /*seed=*/7);
  hold_out_validation(b, 50, /*seed=*/7);
  EXPECT_EQ(a.val.size(), 50);
  EXPECT_EQ(a.train.size(), n - 50);
  EXPECT_TRUE(torch::equal(a.val.images, b.val.images));
  const auto val_counts = class_counts(a.val, a.num_classes());
  for (size_t k = 0; k < val_counts.size(); ++k) {
    const double share = 50.0 * static_cast<double>(before[k]) / static_cast<double>(n);
    EXPECT_LE(std::abs(static_cast<double>(val_counts[k]) - share), 1.0) << "class " << k;
  }
  EXPECT_EQ(a.eval_split_name(), "val");
  // Another seed picks other images; the union is always the original split.
  DataSource c = testing::tiny_data(1);
  hold_out_validation(c, 50, /*seed=*/8);
  EXPECT_FALSE(torch::equal(a.val.images, c.val.images));
  const DataSource orig = testing::tiny_data(1);
  auto sum = [](const Dataset& d) { return d.images.to(torch::kInt64).sum().item<int64_t>(); };
  EXPECT_EQ(sum(a.train) + sum(a.val), sum(orig.train));
  EXPECT_THROW(hold_out_validation(c, c.train.size(), 1), c10::ValueError);
}

TEST(Batcher, RandomCropMatchesAPerImageReference) {
  torch::manual_seed(0);
  torch::Tensor x = torch::randint(0, 255, {5, 3, 6, 7}, torch::kUInt8);
  const std::vector<int64_t> dy{0, 4, 8, 2, 4}, dx{8, 4, 0, 1, 4};
  torch::Tensor y = random_crop(x, /*padding=*/4, dy, dx);
  torch::Tensor padded = torch::constant_pad_nd(x, {4, 4, 4, 4}, 0);
  for (int64_t b = 0; b < 5; ++b) {
    EXPECT_TRUE(torch::equal(y[b], padded[b].narrow(1, dy[b], 6).narrow(2, dx[b], 7))) << b;
  }
  EXPECT_TRUE(torch::equal(y[1], x[1]));  // offset (p, p) is the identity
}

TEST(Batcher, PrefetchingGivesIdenticalBatchesAndCropsAreSeeded) {
  const DataSource d = testing::tiny_data(2);
  const ChannelStats stats = channel_stats(d.train.images);
  BatcherOptions on{16, true, 5, /*crop_padding=*/4, /*prefetch=*/true};
  BatcherOptions off = on;
  off.prefetch = false;
  TrainBatcher a(d.train, stats, on), b(d.train, stats, off);
  for (int step = 0; step < 40; ++step) {  // several epochs
    auto [xa, ya] = a.next();
    auto [xb, yb] = b.next();
    ASSERT_TRUE(torch::equal(xa, xb)) << step;
    ASSERT_TRUE(torch::equal(ya, yb)) << step;
    EXPECT_EQ(a.epoch(), b.epoch());
  }
  BatcherOptions nocrop = off;
  nocrop.crop_padding = 0;
  TrainBatcher c(d.train, stats, nocrop);
  TrainBatcher e(d.train, stats, off);
  EXPECT_FALSE(torch::equal(c.next().first, e.next().first));
}

}  // namespace
}  // namespace liondg
