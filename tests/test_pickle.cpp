// Pickle reader: hand-written opcode fixtures in the styles of Python 2
// cPickle and Python 3 protocols 2-5, every kind of malformed input, and
// pickles written by the system's python3 + numpy. Needs no torch.

#include <liondg/data/pickle.h>
#include <liondg/errors.h>

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace liondg {
namespace {

constexpr int64_t kImageBytes = 3 * 32 * 32;
constexpr const char* kWhat = "cifar-10-batches-py/data_batch_1";

// ------------------------------------------------------------------ raw bytes

// Appends opcodes and their arguments.
class Emitter {
 public:
  Emitter& op(uint8_t code) {
    out_.push_back(code);
    return *this;
  }
  // `bytes` little-endian bytes of `value`.
  Emitter& le(uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out_.push_back(static_cast<uint8_t>(value >> (8 * i)));
    return *this;
  }
  Emitter& raw(const std::string& s) {
    out_.insert(out_.end(), s.begin(), s.end());
    return *this;
  }
  Emitter& line(const std::string& s) { return raw(s + "\n"); }
  size_t size() const { return out_.size(); }
  std::vector<uint8_t>& bytes() { return out_; }
  const std::vector<uint8_t>& bytes() const { return out_; }

 private:
  std::vector<uint8_t> out_;
};

PickleDocument parse(const std::vector<uint8_t>& bytes, const std::string& what = kWhat) {
  return parse_pickle(bytes.data(), bytes.size(), what);
}
PickleDocument parse(const Emitter& e) { return parse(e.bytes()); }

// The message of the DataError `fn` throws ("" and a test failure if none).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const DataError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a DataError";
  return "";
}

// Expects `fn` to throw a DataError whose message contains every one of `needles`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  const std::string message = error_of(fn);
  for (const auto& n : needles) EXPECT_NE(message.find(n), std::string::npos) << "'" << n << "' not in: " << message;
}

// ------------------------------------------------------------------ pickler styles

enum class Style {
  kPy2,       // Python 2 cPickle, protocol 2: str is bytes (SHORT_BINSTRING/BINSTRING), memo from 1
  kPy3Proto2, // Python 3, protocol 2: bytes as _codecs.encode(str, 'latin1'), str as BINUNICODE
  kProto3,    // SHORT_BINBYTES/BINBYTES
  kProto4,    // FRAME, MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE
  kProto5,    // protocol 5 _frombuffer(BYTEARRAY8 ...); hand-made: 8-byte length opcodes everywhere
};
const std::vector<Style> kStyles = {Style::kPy2, Style::kPy3Proto2, Style::kProto3, Style::kProto4, Style::kProto5};

const char* style_name(Style style) {
  switch (style) {
    case Style::kPy2: return "python2-cpickle";
    case Style::kPy3Proto2: return "python3-protocol2";
    case Style::kProto3: return "protocol3";
    case Style::kProto4: return "protocol4";
    case Style::kProto5: return "protocol5";
  }
  return "?";
}

// Latin-1 bytes -> UTF-8 (what Python 3 stores for str(b, 'latin1')).
std::string latin1_to_utf8(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<uint8_t>(ch);
    if (c < 0x80) {
      out += ch;
    } else {
      out += static_cast<char>(0xc0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3f));
    }
  }
  return out;
}

// Writes objects the way the pickler of a style does: every object memoized,
// repeated globals and strings fetched from the memo.
class Writer {
 public:
  explicit Writer(Style style) : style_(style) {
    e_.op(0x80).le(static_cast<uint64_t>(protocol()), /*bytes=*/1);
    if (protocol() >= 4) {
      e_.op(0x95);
      frame_at_ = e_.size();
      e_.le(0, /*bytes=*/8);
    }
    next_memo_ = style == Style::kPy2 ? 1 : 0;
  }

  int protocol() const {
    switch (style_) {
      case Style::kPy2:
      case Style::kPy3Proto2: return 2;
      case Style::kProto3: return 3;
      case Style::kProto4: return 4;
      case Style::kProto5: return 5;
    }
    return 0;
  }
  bool py2() const { return style_ == Style::kPy2; }
  Emitter& emitter() { return e_; }

  std::vector<uint8_t> finish() {
    e_.op('.');
    if (frame_at_ > 0) {
      const uint64_t length = e_.size() - (frame_at_ + 8);
      for (int i = 0; i < 8; ++i) e_.bytes()[frame_at_ + i] = static_cast<uint8_t>(length >> (8 * i));
    }
    return e_.bytes();
  }

  void memoize() {
    if (protocol() >= 4) {
      e_.op(0x94);
    } else if (next_memo_ < 256) {
      e_.op('q').le(static_cast<uint64_t>(next_memo_), /*bytes=*/1);
    } else {
      e_.op('r').le(static_cast<uint64_t>(next_memo_), /*bytes=*/4);
    }
    ++next_memo_;
  }

  void none() { e_.op('N'); }
  void boolean(bool b) { e_.op(b ? 0x88 : 0x89); }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      e_.op('K').le(static_cast<uint64_t>(v), /*bytes=*/1);
    } else if (v >= 0 && v < 65536) {
      e_.op('M').le(static_cast<uint64_t>(v), /*bytes=*/2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      e_.op('J').le(static_cast<uint32_t>(static_cast<int32_t>(v)), /*bytes=*/4);
    } else {
      e_.op(0x8a).le(8, /*bytes=*/1).le(static_cast<uint64_t>(v), /*bytes=*/8);
    }
  }

  // A Python 3 str.
  void unicode(const std::string& utf8) {
    if (style_ == Style::kProto5) {
      e_.op(0x8d).le(utf8.size(), /*bytes=*/8);
    } else if (protocol() >= 4 && utf8.size() < 256) {
      e_.op(0x8c).le(utf8.size(), /*bytes=*/1);
    } else {
      e_.op('X').le(utf8.size(), /*bytes=*/4);
    }
    e_.raw(utf8);
    memoize();
  }

  // Python 2's str.
  void py2_string(const std::string& s) {
    if (s.size() < 256) {
      e_.op('U').le(s.size(), /*bytes=*/1);
    } else {
      e_.op('T').le(s.size(), /*bytes=*/4);
    }
    e_.raw(s);
    memoize();
  }

  // The str type of the pickling Python: bytes in Python 2, unicode in Python 3.
  void native_str(const std::string& s) {
    if (py2()) {
      py2_string(s);
    } else if (!reuse("str:" + s)) {
      unicode(s);
      remember("str:" + s);
    }
  }

  void bytes(const std::string& s) {
    switch (style_) {
      case Style::kPy2: py2_string(s); return;
      case Style::kPy3Proto2:
        if (s.empty()) {
          global("__builtin__", "bytes");
          e_.op(')').op('R');
          memoize();
          return;
        }
        global("_codecs", "encode");
        unicode(latin1_to_utf8(s));
        native_str("latin1");
        e_.op(0x86);
        memoize();
        e_.op('R');
        memoize();
        return;
      case Style::kProto5: e_.op(0x8e).le(s.size(), /*bytes=*/8).raw(s); memoize(); return;
      case Style::kProto3:
      case Style::kProto4:
        if (s.size() < 256) {
          e_.op('C').le(s.size(), /*bytes=*/1);
        } else {
          e_.op('B').le(s.size(), /*bytes=*/4);
        }
        e_.raw(s);
        memoize();
        return;
    }
  }

  void global(const std::string& module, const std::string& name) {
    const std::string key = "global:" + module + "." + name;
    if (reuse(key)) return;
    if (protocol() >= 4) {
      native_str(module);
      native_str(name);
      e_.op(0x93);
    } else {
      e_.op('c').line(module).line(name);
    }
    memoize();
    remember(key);
  }

  void tuple_of_ints(const std::vector<int64_t>& values) {
    if (values.empty()) {
      e_.op(')');
      return;
    }
    if (values.size() > 3) e_.op('(');
    for (const int64_t v : values) integer(v);
    e_.op(values.size() == 1 ? 0x85 : values.size() == 2 ? 0x86 : values.size() == 3 ? 0x87 : 't');
    memoize();
  }

  // numpy.dtype(type) with byte order `order`.
  void dtype(const std::string& type, char order) {
    global("numpy", "dtype");
    native_str(type);
    if (py2()) {
      integer(0);  // Python 2 numpy passes ints for align and copy
      integer(1);
    } else {
      boolean(false);
      boolean(true);
    }
    e_.op(0x87);
    memoize();
    e_.op('R');
    memoize();
    e_.op('(');
    integer(3);
    native_str(std::string(1, order));
    none();
    none();
    none();
    integer(-1);
    integer(-1);
    integer(0);
    e_.op('t');
    memoize();
    e_.op('b');
  }

  // A numpy array with raw element bytes `raw`.
  void array(const std::vector<int64_t>& shape, const std::string& type, char order, const std::string& raw,
             bool fortran) {
    if (style_ == Style::kProto5) {
      global("numpy.core.numeric", "_frombuffer");
      e_.op('(');
      e_.op(0x96).le(raw.size(), /*bytes=*/8).raw(raw);
      memoize();
      dtype(type, order);
      tuple_of_ints(shape);
      native_str(fortran ? "F" : "C");
      e_.op('t');
      memoize();
      e_.op('R');
      memoize();
      return;
    }
    global("numpy.core.multiarray", "_reconstruct");
    global("numpy", "ndarray");
    tuple_of_ints({0});
    bytes("b");
    e_.op(0x87);
    memoize();
    e_.op('R');
    memoize();
    e_.op('(');
    integer(1);
    tuple_of_ints(shape);
    dtype(type, order);
    boolean(fortran);
    bytes(raw);
    e_.op('t');
    memoize();
    e_.op('b');
  }

  // A list of `n` items written by `item(i)`, appended in batches like Python.
  void list(size_t n, const std::function<void(size_t)>& item) {
    e_.op(']');
    memoize();
    constexpr size_t kBatch = 1000;
    for (size_t start = 0; start < n; start += kBatch) {
      const size_t end = std::min(n, start + kBatch);
      if (end - start == 1) {
        item(start);
        e_.op('a');
        continue;
      }
      e_.op('(');
      for (size_t i = start; i < end; ++i) item(i);
      e_.op('e');
    }
  }

  // A dict of `n` entries written by `entry(i)` (key then value).
  void dict(size_t n, const std::function<void(size_t)>& entry) {
    e_.op('}');
    memoize();
    if (n == 1) {
      entry(0);
      e_.op('s');
    } else if (n > 1) {
      e_.op('(');
      for (size_t i = 0; i < n; ++i) entry(i);
      e_.op('u');
    }
  }

 private:
  bool reuse(const std::string& key) {
    const auto it = cache_.find(key);
    if (it == cache_.end()) return false;
    if (it->second < 256) {
      e_.op('h').le(static_cast<uint64_t>(it->second), /*bytes=*/1);
    } else {
      e_.op('j').le(static_cast<uint64_t>(it->second), /*bytes=*/4);
    }
    return true;
  }
  void remember(const std::string& key) { cache_[key] = next_memo_ - 1; }

  Style style_;
  Emitter e_;
  size_t frame_at_ = 0;
  int next_memo_ = 0;
  std::map<std::string, int> cache_;
};

// ------------------------------------------------------------------ CIFAR-like fixtures

struct Batch {
  int64_t n = 0;
  std::string pixels;                // raw array bytes
  std::vector<int64_t> labels;       // "labels" or "fine_labels"
  std::vector<int64_t> coarse;       // "coarse_labels" (CIFAR-100)
  bool cifar100 = false;
  std::vector<int64_t> shape;        // of "data"
  std::string dtype = "u1";
  char order = '|';
  bool fortran = false;
  bool str_keys = false;             // keys as str instead of bytes
  bool labels_as_array = false;      // labels as an int64 numpy array
  bool labels_as_tuple = false;
  std::set<std::string> omit;        // keys left out
};

Batch sample_batch(int64_t n, bool cifar100) {
  Batch b;
  b.n = n;
  b.cifar100 = cifar100;
  b.shape = {n, kImageBytes};
  for (int64_t i = 0; i < n * kImageBytes; ++i) b.pixels += static_cast<char>((i * 31 + 7 + i / 977) % 256);
  for (int64_t i = 0; i < n; ++i) {
    b.labels.push_back(cifar100 ? (i * 37 + 99) % 100 : (i * 3 + 9) % 10);
    if (cifar100) b.coarse.push_back((i * 7 + 19) % 20);
  }
  return b;
}

std::string int64_le_bytes(const std::vector<int64_t>& values) {
  std::string s;
  for (const int64_t v : values) {
    for (int i = 0; i < 8; ++i) s += static_cast<char>(static_cast<uint64_t>(v) >> (8 * i));
  }
  return s;
}

std::vector<uint8_t> write_batch(Style style, const Batch& b) {
  Writer w(style);
  auto key = [&](const std::string& k) {
    if (b.str_keys && !w.py2()) {
      w.native_str(k);
    } else {
      w.bytes(k);
    }
  };
  auto labels = [&](const std::vector<int64_t>& values) {
    if (b.labels_as_array) {
      w.array({static_cast<int64_t>(values.size())}, "i8", '<', int64_le_bytes(values), /*fortran=*/false);
    } else if (b.labels_as_tuple) {
      Emitter& e = w.emitter();
      e.op('(');
      for (const int64_t v : values) w.integer(v);
      e.op('t');
      w.memoize();
    } else {
      w.list(values.size(), [&](size_t i) { w.integer(values[i]); });
    }
  };
  using Entry = std::pair<std::string, std::function<void()>>;
  std::vector<Entry> entries;
  auto filenames = [&] {
    w.list(static_cast<size_t>(b.n), [&](size_t i) { w.bytes("img_" + std::to_string(i) + ".png"); });
  };
  auto data = [&] { w.array(b.shape, b.dtype, b.order, b.pixels, b.fortran); };
  if (b.cifar100) {
    entries = {{"filenames", filenames},
               {"batch_label", [&] { w.bytes("training batch 1 of 1"); }},
               {"fine_labels", [&] { labels(b.labels); }},
               {"coarse_labels", [&] { labels(b.coarse); }},
               {"data", data}};
  } else {
    entries = {{"batch_label", [&] { w.bytes("training batch 1 of 5"); }},
               {"labels", [&] { labels(b.labels); }},
               {"data", data},
               {"filenames", filenames}};
  }
  std::vector<Entry> kept;
  for (const auto& entry : entries) {
    if (b.omit.count(entry.first) == 0) kept.push_back(entry);
  }
  w.dict(kept.size(), [&](size_t i) {
    key(kept[i].first);
    kept[i].second();
  });
  return w.finish();
}

std::vector<uint8_t> write_meta(Style style, const std::map<std::string, std::vector<std::string>>& lists) {
  Writer w(style);
  std::vector<std::pair<std::string, const std::vector<std::string>*>> entries;
  for (const auto& kv : lists) entries.emplace_back(kv.first, &kv.second);
  w.dict(entries.size() + 1, [&](size_t i) {
    if (i == entries.size()) {
      w.bytes("num_vis");
      w.integer(kImageBytes);
      return;
    }
    w.bytes(entries[i].first);
    const std::vector<std::string>& names = *entries[i].second;
    w.list(names.size(), [&](size_t j) { w.bytes(names[j]); });
  });
  return w.finish();
}

CifarPickleBatch read_batch(const std::vector<uint8_t>& bytes, const std::string& what = kWhat) {
  return read_cifar_pickle_batch(bytes.data(), bytes.size(), what);
}

void expect_batch(const CifarPickleBatch& got, const Batch& want) {
  EXPECT_EQ(got.count, want.n);
  ASSERT_EQ(got.images.size(), want.pixels.size());
  EXPECT_TRUE(std::equal(got.images.begin(), got.images.end(), want.pixels.begin(),
                         [](uint8_t a, char b) { return a == static_cast<uint8_t>(b); }));
  EXPECT_EQ(got.labels, want.labels);
  EXPECT_EQ(got.coarse_labels, want.coarse);
}

const std::vector<std::string> kCifar10Names = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                "dog",      "frog",       "horse", "ship", "truck"};

// ------------------------------------------------------------------ formats

TEST(PickleFormats, DecodesCifar10InEveryStyle) {
  const Batch b = sample_batch(/*n=*/2, /*cifar100=*/false);
  for (const Style style : kStyles) {
    SCOPED_TRACE(style_name(style));
    const std::vector<uint8_t> bytes = write_batch(style, b);
    expect_batch(read_batch(bytes), b);
  }
}

TEST(PickleFormats, DecodesCifar100FineAndCoarseInEveryStyle) {
  const Batch b = sample_batch(/*n=*/3, /*cifar100=*/true);
  for (const Style style : kStyles) {
    SCOPED_TRACE(style_name(style));
    expect_batch(read_batch(write_batch(style, b)), b);
  }
}

TEST(PickleFormats, Python2CPickleByteLayout) {
  // The layout of the official cifar-10-batches-py files (cPickle protocol 2:
  // only some objects memoized, memo from 1), cut down to two images.
  const std::string pixels = sample_batch(/*n=*/2, /*cifar100=*/false).pixels;
  Emitter e;
  e.op(0x80).le(2, /*bytes=*/1).op('}').op('q').le(1, /*bytes=*/1).op('(');
  e.op('U').le(4, /*bytes=*/1).raw("data").op('q').le(2, /*bytes=*/1);
  e.op('c').line("numpy.core.multiarray").line("_reconstruct").op('q').le(3, /*bytes=*/1);
  e.op('c').line("numpy").line("ndarray").op('q').le(4, /*bytes=*/1);
  e.op('K').le(0, /*bytes=*/1).op(0x85).op('U').le(1, /*bytes=*/1).raw("b").op(0x87).op('R').op('q').le(5, /*bytes=*/1);
  e.op('(').op('K').le(1, /*bytes=*/1).op('K').le(2, /*bytes=*/1).op('M').le(3072, /*bytes=*/2).op(0x86);
  e.op('c').line("numpy").line("dtype").op('q').le(6, /*bytes=*/1);
  e.op('U').le(2, /*bytes=*/1).raw("u1").op('K').le(0, /*bytes=*/1).op('K').le(1, /*bytes=*/1).op(0x87).op('R');
  e.op('q').le(7, /*bytes=*/1).op('(').op('K').le(3, /*bytes=*/1).op('U').le(1, /*bytes=*/1).raw("|");
  e.op('N').op('N').op('N').op('J').le(0xffffffff, /*bytes=*/4).op('J').le(0xffffffff, /*bytes=*/4);
  e.op('K').le(0, /*bytes=*/1).op('t').op('b').op(0x89);
  e.op('T').le(pixels.size(), /*bytes=*/4).raw(pixels).op('t').op('b');
  e.op('U').le(6, /*bytes=*/1).raw("labels").op('q').le(8, /*bytes=*/1).op(']').op('q').le(9, /*bytes=*/1);
  e.op('(').op('K').le(6, /*bytes=*/1).op('K').le(9, /*bytes=*/1).op('e');
  e.op('U').le(11, /*bytes=*/1).raw("batch_label").op('q').le(10, /*bytes=*/1);
  e.op('U').le(21, /*bytes=*/1).raw("training batch 1 of 5").op('q').le(11, /*bytes=*/1);
  e.op('U').le(9, /*bytes=*/1).raw("filenames").op('q').le(12, /*bytes=*/1).op(']').op('q').le(13, /*bytes=*/1);
  e.op('(').op('U').le(5, /*bytes=*/1).raw("a.png").op('q').le(14, /*bytes=*/1);
  e.op('U').le(5, /*bytes=*/1).raw("b.png").op('q').le(15, /*bytes=*/1).op('e').op('u').op('.');
  const CifarPickleBatch b = read_batch(e.bytes());
  EXPECT_EQ(b.count, 2);
  EXPECT_EQ(std::string(b.images.begin(), b.images.end()), pixels);
  EXPECT_EQ(b.labels, (std::vector<int64_t>{6, 9}));
  EXPECT_TRUE(b.coarse_labels.empty());
  const PickleDocument doc = parse(e);
  EXPECT_EQ(doc.root().get("filenames").at(1).as_bytes(), "b.png");
  EXPECT_EQ(doc.root().get("batch_label").as_bytes(), "training batch 1 of 5");
}

TEST(PickleFormats, FixturesUseTheIntendedOpcodes) {
  const Batch b = sample_batch(/*n=*/1, /*cifar100=*/false);
  auto has = [](const std::vector<uint8_t>& bytes, const std::string& needle) {
    return std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end(),
                       [](uint8_t a, char b) { return a == static_cast<uint8_t>(b); }) != bytes.end();
  };
  const auto py2 = write_batch(Style::kPy2, b);
  EXPECT_TRUE(has(py2, "U\x04" "data"));             // SHORT_BINSTRING key
  EXPECT_TRUE(has(py2, std::string("T\x00\x0c\x00\x00", 5)));  // BINSTRING of 3072 bytes
  const auto py3 = write_batch(Style::kPy3Proto2, b);
  EXPECT_TRUE(has(py3, "c_codecs\nencode\n"));
  EXPECT_TRUE(has(write_batch(Style::kProto3, b), std::string("B\x00\x0c\x00\x00", 5)));  // BINBYTES
  const auto p4 = write_batch(Style::kProto4, b);
  EXPECT_EQ(p4[2], 0x95);  // FRAME
  EXPECT_TRUE(has(p4, "\x94"));
  EXPECT_TRUE(has(p4, "\x93"));
  EXPECT_TRUE(has(write_batch(Style::kProto5, b), "_frombuffer"));
}

TEST(PickleFormats, AcceptsStrKeysOtherShapesAndLabelForms) {
  for (const Style style : kStyles) {
    SCOPED_TRACE(style_name(style));
    Batch b = sample_batch(/*n=*/2, /*cifar100=*/false);
    b.str_keys = true;
    expect_batch(read_batch(write_batch(style, b)), b);
    b.str_keys = false;
    b.shape = {2, 3, 32, 32};
    expect_batch(read_batch(write_batch(style, b)), b);
    b.shape = {2 * kImageBytes};
    expect_batch(read_batch(write_batch(style, b)), b);
    b.labels_as_tuple = true;
    expect_batch(read_batch(write_batch(style, b)), b);
    b.labels_as_tuple = false;
    b.labels_as_array = true;
    expect_batch(read_batch(write_batch(style, b)), b);
  }
}

TEST(PickleFormats, LargeBatchUsesLongMemoIndicesAndManyAppends) {
  const Batch b = sample_batch(/*n=*/1200, /*cifar100=*/true);  // > 255 memo entries, > 1000 list items
  for (const Style style : {Style::kPy2, Style::kPy3Proto2, Style::kProto4}) {
    SCOPED_TRACE(style_name(style));
    const auto bytes = write_batch(style, b);
    if (style == Style::kPy2) {
      EXPECT_NE(std::find(bytes.begin(), bytes.end(), static_cast<uint8_t>('r')), bytes.end());
    }
    expect_batch(read_batch(bytes), b);
  }
}

TEST(PickleFormats, EmptyBatch) {
  const Batch b = sample_batch(/*n=*/0, /*cifar100=*/false);
  for (const Style style : kStyles) {
    SCOPED_TRACE(style_name(style));
    expect_batch(read_batch(write_batch(style, b)), b);
  }
}

// ------------------------------------------------------------------ meta files

TEST(PickleMeta, ReadsLabelNamesInEveryStyle) {
  const std::vector<std::string> coarse = {"aquatic mammals", "fish", "caf\xe9"};  // latin-1 byte
  for (const Style style : kStyles) {
    SCOPED_TRACE(style_name(style));
    const auto meta10 = write_meta(style, {{"label_names", kCifar10Names}});
    EXPECT_EQ(read_cifar_pickle_names(meta10.data(), meta10.size(), "label_names", "batches.meta"), kCifar10Names);
    const auto meta100 =
        write_meta(style, {{"fine_label_names", {"apple", "aquarium_fish"}}, {"coarse_label_names", coarse}});
    EXPECT_EQ(read_cifar_pickle_names(meta100.data(), meta100.size(), "fine_label_names", "meta"),
              (std::vector<std::string>{"apple", "aquarium_fish"}));
    EXPECT_EQ(read_cifar_pickle_names(meta100.data(), meta100.size(), "coarse_label_names", "meta"), coarse);
  }
}

TEST(PickleMeta, Errors) {
  const auto meta = write_meta(Style::kProto3, {{"label_names", kCifar10Names}});
  expect_error([&] { read_cifar_pickle_names(meta.data(), meta.size(), "fine_label_names", "batches.meta"); },
               {"'batches.meta'", "missing key 'fine_label_names'", "'label_names'", "b'num_vis'"});
  expect_error([&] { read_cifar_pickle_names(meta.data(), meta.size(), "num_vis", "batches.meta"); },
               {"'batches.meta'", "key 'num_vis': expected a list of names, found int"});
  Writer w(Style::kProto3);
  w.dict(1, [&](size_t) {
    w.bytes("label_names");
    w.list(2, [&](size_t i) { i == 0 ? w.bytes("a") : w.integer(7); });
  });
  const auto bad = w.finish();
  expect_error([&] { read_cifar_pickle_names(bad.data(), bad.size(), "label_names", "m"); },
               {"'m'", "element 1: expected bytes or str, found int"});
  Writer l(Style::kProto3);
  l.list(0, [](size_t) {});
  const auto not_dict = l.finish();
  expect_error([&] { read_cifar_pickle_names(not_dict.data(), not_dict.size(), "label_names", "m"); },
               {"'m'", "expected a dict at the top level, found list"});
}

// ------------------------------------------------------------------ the value tree

TEST(PickleValues, Scalars) {
  Emitter e;
  e.op(0x80).le(2, /*bytes=*/1).op(']').op('(');
  e.op('N').op(0x88).op(0x89);                                             // 0-2
  e.op('K').le(255, /*bytes=*/1).op('M').le(65535, /*bytes=*/2);           // 3-4
  e.op('J').le(0xfffffffe, /*bytes=*/4);                                   // 5: -2
  e.op(0x8a).le(9, /*bytes=*/1).le(0x7fffffffffffffff, /*bytes=*/8).le(0, /*bytes=*/1);  // 6: int64 max, padded
  e.op(0x8a).le(1, /*bytes=*/1).le(0xff, /*bytes=*/1);                     // 7: -1
  e.op(0x8a).le(0, /*bytes=*/1);                                           // 8: 0
  e.op(0x8b).le(2, /*bytes=*/4).le(0x8000, /*bytes=*/2);                   // 9: -32768
  e.op('I').line("123").op('I').line("01").op('L').line("-5L");           // 10-12
  e.op('G').raw(std::string("\x3f\xf8\0\0\0\0\0\0", 8));                   // 13: 1.5
  e.op('F').line("2.25");                                                  // 14
  e.op('U').le(2, /*bytes=*/1).raw("ab").op('C').le(2, /*bytes=*/1).raw("cd");  // 15-16
  e.op('X').le(2, /*bytes=*/4).raw("\xc3\xa9").op(0x8c).le(1, /*bytes=*/1).raw("x");  // 17-18
  e.op(0x8d).le(1, /*bytes=*/8).raw("y").op('T').le(1, /*bytes=*/4).raw("t");     // 19-20
  e.op('B').le(1, /*bytes=*/4).raw("b").op(0x8e).le(1, /*bytes=*/8).raw("8");     // 21-22
  e.op(0x96).le(3, /*bytes=*/8).raw("arr");                                       // 23
  e.op('e').op('.');
  const PickleDocument doc = parse(e);
  const PickleValue& v = doc.root();
  ASSERT_EQ(v.kind(), PickleValue::Kind::kList);
  ASSERT_EQ(v.size(), 24u);
  EXPECT_TRUE(v.at(0).is_none());
  EXPECT_TRUE(v.at(1).as_bool());
  EXPECT_FALSE(v.at(2).as_bool());
  EXPECT_EQ(v.at(3).as_int(), 255);
  EXPECT_EQ(v.at(4).as_int(), 65535);
  EXPECT_EQ(v.at(5).as_int(), -2);
  EXPECT_EQ(v.at(6).as_int(), INT64_MAX);
  EXPECT_EQ(v.at(7).as_int(), -1);
  EXPECT_EQ(v.at(8).as_int(), 0);
  EXPECT_EQ(v.at(9).as_int(), -32768);
  EXPECT_EQ(v.at(10).as_int(), 123);
  EXPECT_EQ(v.at(11).kind(), PickleValue::Kind::kBool);
  EXPECT_EQ(v.at(12).as_int(), -5);
  EXPECT_EQ(v.at(13).as_float(), 1.5);
  EXPECT_EQ(v.at(14).as_float(), 2.25);
  EXPECT_EQ(v.at(15).as_bytes(), "ab");
  EXPECT_EQ(v.at(16).as_bytes(), "cd");
  EXPECT_EQ(v.at(17).as_str(), "\xc3\xa9");
  EXPECT_EQ(v.at(18).as_str(), "x");
  EXPECT_EQ(v.at(19).as_str(), "y");
  EXPECT_EQ(v.at(20).as_bytes(), "t");
  EXPECT_EQ(v.at(21).as_bytes(), "b");
  EXPECT_EQ(v.at(22).as_bytes(), "8");
  EXPECT_EQ(v.at(23).as_bytes(), "arr");
  EXPECT_EQ(v.at(17).as_text(), "\xc3\xa9");
  EXPECT_EQ(v.at(3).offset(), 7u);
  EXPECT_EQ(v.at(3).what(), kWhat);
}

TEST(PickleValues, ContainersMemoAndSharing) {
  Emitter e;
  // ([1, 2], [1, 2] (same list, via the memo), {b'k': 1, 'k': 2}, (), 3 DUP'ed)
  e.op(0x80).le(2, /*bytes=*/1).op('(');
  e.op(']').op('q').le(7, /*bytes=*/1).op('K').le(1, /*bytes=*/1).op('a');
  e.op('h').le(7, /*bytes=*/1).op('K').le(2, /*bytes=*/1).op('a');        // appends to the shared list
  e.op('(').op('C').le(1, /*bytes=*/1).raw("k").op('K').le(1, /*bytes=*/1);
  e.op(0x8c).le(1, /*bytes=*/1).raw("k").op('K').le(2, /*bytes=*/1).op('d');
  e.op(')');
  e.op('K').le(3, /*bytes=*/1).op('2');
  e.op('N').op('0');                                                        // POP
  e.op('(').op('N').op('N').op('1');                                        // POP_MARK
  e.op('t').op('.');
  const PickleDocument doc = parse(e);
  const PickleValue& t = doc.root();
  ASSERT_EQ(t.kind(), PickleValue::Kind::kTuple);
  ASSERT_EQ(t.size(), 6u);
  EXPECT_EQ(&t.at(0), &t.at(1));
  ASSERT_EQ(t.at(0).size(), 2u);
  EXPECT_EQ(t.at(1).at(1).as_int(), 2);
  const PickleValue& d = t.at(2);
  EXPECT_EQ(d.size(), 2u);
  EXPECT_EQ(d.get("k").as_int(), 2);  // bytes and str keys both match; the last wins
  EXPECT_EQ(d.key_at(0).as_bytes(), "k");
  EXPECT_EQ(d.value_at(0).as_int(), 1);
  EXPECT_EQ(d.find("x"), nullptr);
  EXPECT_EQ(t.at(3).size(), 0u);
  EXPECT_EQ(t.at(4).as_int(), 3);
  EXPECT_EQ(&t.at(4), &t.at(5));
  EXPECT_EQ(t.repr(), "([1, 2], [1, 2], {b'k': 1, 'k': 2}, (), 3, 3)");
  EXPECT_GE(doc.value_count(), 10u);
}

TEST(PickleValues, SelfReferencesParseAndPrintBounded) {
  Emitter e;  // l = []; l.append(l); o = os.system(); o.__setstate__(o); (l, o)
  e.op(0x80).le(2, /*bytes=*/1);
  e.op(']').op('q').le(0, /*bytes=*/1).op('h').le(0, /*bytes=*/1).op('a');
  e.op('c').line("os").line("system").op(')').op('R').op('q').le(1, /*bytes=*/1).op('h').le(1, /*bytes=*/1).op('b');
  e.op(0x86).op('.');
  const PickleDocument doc = parse(e);
  const PickleValue& l = doc.root().at(0);
  EXPECT_EQ(&l.at(0), &l);
  EXPECT_EQ(doc.root().at(1).state(), &doc.root().at(1));
  const std::string r = doc.root().repr(/*max_chars=*/100);
  EXPECT_LE(r.size(), 110u);
  EXPECT_EQ(r.rfind("([[[[", 0), 0u) << r;
}

TEST(PickleValues, GlobalsAreNamesAndCallsAreNeverExecuted) {
  Emitter e;
  e.op(0x80).le(2, /*bytes=*/1);
  e.op('c').line("os").line("system").op('U').le(8, /*bytes=*/1).raw("touch /x").op(0x85).op('R');
  e.op(0x8c).le(8, /*bytes=*/1).raw("builtins").op(0x8c).le(4, /*bytes=*/1).raw("eval").op(0x93);
  e.op(0x86).op('.');
  const PickleDocument doc = parse(e);
  const PickleValue& call = doc.root().at(0);
  EXPECT_EQ(call.kind(), PickleValue::Kind::kObject);
  EXPECT_EQ(call.global_name(), "os.system");
  EXPECT_EQ(call.args().at(0).as_bytes(), "touch /x");
  EXPECT_EQ(call.state(), nullptr);
  EXPECT_EQ(doc.root().at(1).kind(), PickleValue::Kind::kGlobal);
  EXPECT_EQ(doc.root().at(1).global_name(), "builtins.eval");
  EXPECT_EQ(call.repr(), "os.system(b'touch /x',)");
}

TEST(PickleValues, AccessorsThrowNamingFileAndOffset) {
  Emitter e;
  e.op(0x80).le(2, /*bytes=*/1).op('K').le(1, /*bytes=*/1).op(0x8c).le(1, /*bytes=*/1).raw("s").op(0x86).op('.');
  const PickleDocument doc = parse(e);
  const PickleValue& t = doc.root();
  expect_error([&] { t.at(1).as_int(); }, {"'" + std::string(kWhat) + "'", "expected an int, found str 's'", "byte 4"});
  expect_error([&] { t.at(0).as_bytes(); }, {"expected bytes, found int 1", "byte 2"});
  expect_error([&] { t.at(2); }, {"index 2 out of range for a tuple of 2 elements", "byte 7"});
  expect_error([&] { t.get("x"); }, {"expected a dict, found tuple"});
  expect_error([&] { t.args(); }, {"expected an object, found tuple"});
  expect_error([&] { t.at(0).size(); }, {"expected a tuple, list or dict, found int"});
  expect_error([&] { pickle_ndarray(t); }, {"expected a numpy array, found tuple"});
}

TEST(PickleValues, NdarrayAccessor) {
  for (const Style style : kStyles) {
    SCOPED_TRACE(style_name(style));
    Writer w(style);
    w.array({2, 3}, "i2", '>', std::string("\x00\x01\x00\x02\x00\x03\xff\xff\x00\x05\x00\x06", 12), /*fortran=*/true);
    const auto bytes = w.finish();
    const PickleDocument doc = parse(bytes);
    const PickleArray a = pickle_ndarray(doc.root());
    EXPECT_EQ(a.dtype, ">i2");
    EXPECT_EQ(a.kind, 'i');
    EXPECT_EQ(a.itemsize, 2);
    EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
    EXPECT_TRUE(a.fortran_order);
    EXPECT_EQ(a.numel, 6);
    EXPECT_EQ(a.data.size(), 12u);
    EXPECT_EQ(a.data.substr(6, 2), std::string("\xff\xff", 2));
  }
}

// ------------------------------------------------------------------ malformed pickles

TEST(PickleErrors, TruncatedAtEveryPrefixThrowsDataError) {
  for (const Style style : kStyles) {
    SCOPED_TRACE(style_name(style));
    const auto full = write_batch(style, sample_batch(/*n=*/1, /*cifar100=*/true));
    ASSERT_NO_THROW(read_batch(full));
    size_t not_thrown = 0;
    size_t first_bad = 0;
    for (size_t k = 0; k < full.size(); ++k) {
      // An exactly sized copy, so that a read past the end is caught by ASan.
      const std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(k));
      try {
        read_cifar_pickle_batch(prefix.data(), prefix.size(), kWhat);
        if (not_thrown++ == 0) first_bad = k;
      } catch (const DataError& e) {
        const std::string m = e.what();
        if (m.find(kWhat) == std::string::npos || m.find("byte ") == std::string::npos) {
          ADD_FAILURE() << "prefix " << k << ": " << m;
        }
      }
    }
    EXPECT_EQ(not_thrown, 0u) << "first prefix that did not throw: " << first_bad;
  }
}

TEST(PickleErrors, TruncationMessageNamesFileOffsetAndNeed) {
  const auto full = write_batch(Style::kPy2, sample_batch(/*n=*/1, /*cifar100=*/false));
  const std::string header("T\x00\x0c\x00\x00", 5);  // BINSTRING of 3072 bytes
  const size_t t_at = static_cast<size_t>(
      std::search(full.begin(), full.end(), header.begin(), header.end(),
                  [](uint8_t a, char b) { return a == static_cast<uint8_t>(b); }) -
      full.begin());
  ASSERT_LT(t_at, full.size());
  const size_t cut = t_at + 5 + 100;  // opcode, 4-byte length, 100 of the 3072 bytes
  expect_error([&] { read_cifar_pickle_batch(full.data(), cut, kWhat); },
               {"'cifar-10-batches-py/data_batch_1': pickle truncated at byte " + std::to_string(t_at + 5),
                "opcode 'T' (BINSTRING) at byte " + std::to_string(t_at), "needs 3072 more bytes, 100 left"});
  expect_error([&] { read_cifar_pickle_batch(full.data(), full.size() - 1, kWhat); },
               {"pickle truncated at byte " + std::to_string(full.size() - 1), "before the STOP opcode"});
  expect_error([&] { read_cifar_pickle_batch(nullptr, 0, kWhat); }, {"pickle truncated at byte 0"});
}

// Parses `body` (a protocol-2 header is prepended) and expects a DataError with `needles`.
void expect_bad(const std::string& body, const std::vector<std::string>& needles) {
  std::vector<uint8_t> bytes = {0x80, 0x02};
  bytes.insert(bytes.end(), body.begin(), body.end());
  expect_error([&] { parse(bytes, "bad.pkl"); }, needles);
}

// A string literal body, embedded NUL bytes included.
template <size_t N>
void expect_bad(const char (&body)[N], const std::vector<std::string>& needles) {
  expect_bad(std::string(body, N - 1), needles);
}

TEST(PickleErrors, UnknownAndUnsupportedOpcodes) {
  expect_bad("\xff", {"'bad.pkl': invalid pickle at byte 2", "0xff", "unknown opcode"});
  expect_bad("N\x01.", {"byte 3", "0x01", "unknown opcode"});
  expect_bad("S'abc'\n.", {"'S' (STRING)", "unsupported opcode"});
  expect_bad("\x97.", {"0x97 (NEXT_BUFFER)", "unsupported opcode"});
  expect_bad("\x8f.", {"EMPTY_SET", "unsupported opcode"});
  expect_bad("Q.", {"BINPERSID", "unsupported opcode"});
  expect_error([&] { parse(std::vector<uint8_t>{0x80, 0x06, 'N', '.'}); }, {"unsupported pickle protocol 6"});
}

TEST(PickleErrors, StackUnderflowAndBadStructure) {
  expect_bad("a.", {"APPEND", "stack underflow"});
  expect_bad("K\x01\x86.", {"TUPLE2", "stack underflow"});
  expect_bad("}u.", {"SETITEMS", "no MARK"});
  expect_bad("t.", {"no MARK"});
  expect_bad("K\x01(K\x02\x86t.", {"TUPLE2", "stack underflow", "above the last MARK"});  // the fence
  expect_bad("K\x01(K\x02" "aK\x03t.", {"APPEND", "stack underflow"});
  expect_bad("(0(0(00.", {"POP", "stack underflow"});  // POP right after MARK pops the mark
  expect_bad("K\x01(b.", {"BUILD", "stack underflow"});
  expect_bad(".", {"STOP with 0 values"});
  expect_bad("NN.", {"STOP with 2 values"});
  expect_bad("(N.", {"MARK(s) still open at STOP"});
  expect_bad("N.N", {"1 trailing bytes after STOP"});
  expect_bad("K\x01K\x02" "a.", {"APPEND to a int, not a list"});
  expect_bad("](K\x01u.", {"SETITEMS on a list, not a dict"});
  expect_bad("}(K\x01u.", {"odd number of values"});
  expect_bad("}]K\x01s.", {"unhashable dict key (a list)"});
  expect_bad("K\x01)R.", {"REDUCE of a int, not of a global"});
  expect_bad("cos\nsystem\nK\x01R.", {"REDUCE arguments are a int, not a tuple"});
  expect_bad("K\x01K\x02" "b.", {"BUILD on a int"});
  expect_bad("cos\nsystem\n)RNbNb.", {"BUILD on an object that already has a state"});
  expect_bad("K\x01K\x02\x93.", {"STACK_GLOBAL needs two str"});
  expect_bad("c_codecs\nencode\nX\x02\x00\x00\x00\xe2\x82U\x06latin1\x86R.", {"outside latin-1"});
  expect_bad("c_codecs\nencode\nX\x01\x00\x00\x00" "aU\x05utf-8\x86R.", {"unsupported _codecs.encode call"});
  expect_bad("cos", {"pickle truncated", "newline-terminated"});
  expect_bad("I12x\n.", {"bad integer '12x'"});
  expect_bad("I99999999999999999999\n.", {"does not fit in 64 bits"});
  expect_bad("Fnope\n.", {"bad float 'nope'"});
}

TEST(PickleErrors, BadMemoIndices) {
  expect_bad("h\x05.", {"bad memo index 5"});
  expect_bad("j\x00\x00\x00\x01.", {"bad memo index 16777216"});
  expect_bad("g12\n.", {"bad memo index 12"});
  expect_bad("gx\n.", {"bad memo index 'x'"});
  expect_bad("q\x00.", {"BINPUT", "stack underflow"});
  expect_bad("\x94.", {"MEMOIZE", "stack underflow"});
}

TEST(PickleErrors, AbsurdLengths) {
  expect_bad(std::string("\x8e\xff\xff\xff\xff\xff\xff\xff\x7f", 9) + "abc.",
             {"BINBYTES8", "needs 9223372036854775807 more bytes, 4 left"});
  expect_bad(std::string("X\xff\xff\xff\xff", 5) + "ab.", {"BINUNICODE", "needs 4294967295 more bytes"});
  expect_bad(std::string("\x95\x00\x00\x00\x00\x01\x00\x00\x00", 9) + "N.", {"FRAME", "needs 4294967296 more bytes"});
  expect_bad(std::string("T\xff\xff\xff\xff", 5) + "N.", {"negative BINSTRING byte count"});
  expect_bad(std::string("\x8b\xff\xff\xff\xff", 5) + "N.", {"negative LONG4 byte count"});
  expect_bad(std::string("\x8a\x09\0\0\0\0\0\0\0\0\x01.", 12), {"does not fit in 64 bits"});
  expect_bad(std::string("\x8a\x08\0\0\0\0\0\0\0", 9), {"LONG1", "needs 8 more bytes, 7 left"});
}

TEST(PickleErrors, NestingAndSizeLimits) {
  expect_bad(std::string(kPickleMaxNesting + 1, '('), {"nested MARKs (nesting limit)"});
  std::string dups = "N" + std::string(kPickleMaxStack, '2');
  expect_bad(dups, {"stack deeper than", "size limit"});
}

// ------------------------------------------------------------------ CIFAR checks

TEST(PickleCifarErrors, BadContents) {
  const Batch good = sample_batch(/*n=*/2, /*cifar100=*/true);
  struct Case {
    const char* name;
    std::function<void(Batch&)> change;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"float dtype",
       [](Batch& b) {
         b.dtype = "f4";
         b.order = '<';
         b.pixels += b.pixels + b.pixels + b.pixels;
       },
       {"key 'data': expected dtype '|u1' (uint8), found '<f4'"}},
      {"int64 dtype",
       [](Batch& b) {
         b.dtype = "i8";
         b.order = '<';
         b.pixels = std::string(8 * 2 * kImageBytes, '\0');
       },
       {"expected dtype '|u1' (uint8), found '<i8'"}},
      {"fortran", [](Batch& b) { b.fortran = true; }, {"key 'data': expected a C-order array, found Fortran order"}},
      {"HWC shape", [](Batch& b) { b.shape = {2, 32, 32, 3}; }, {"expected shape (N, 3072)", "found (2, 32, 32, 3)"}},
      {"short rows", [](Batch& b) { b.shape = {4, 1536}; }, {"found (4, 1536)"}},
      {"byte count",
       [](Batch& b) { b.pixels.pop_back(); },
       {"key 'data': array data has 6143 bytes; expected 6144 elements of 1 bytes"}},
      {"fine label range", [](Batch& b) { b.labels[1] = 100; },
       {"key 'fine_labels': label 100 at index 1 out of range; expected labels in [0, 100)"}},
      {"negative label", [](Batch& b) { b.labels[0] = -1; }, {"label -1 at index 0 out of range"}},
      {"coarse label range", [](Batch& b) { b.coarse[0] = 20; },
       {"key 'coarse_labels': label 20 at index 0 out of range; expected labels in [0, 20)"}},
      {"label count", [](Batch& b) { b.labels.pop_back(); },
       {"key 'fine_labels': expected 2 labels (one per image), found 1"}},
      {"coarse count", [](Batch& b) { b.coarse.push_back(1); }, {"expected 2 labels (one per image), found 3"}},
      {"array label range",
       [](Batch& b) {
         b.labels_as_array = true;
         b.labels[1] = 1000;
       },
       {"label 1000 at index 1 out of range"}},
      {"missing data", [](Batch& b) { b.omit.insert("data"); }, {"missing key 'data'", "b'fine_labels'"}},
      {"missing coarse", [](Batch& b) { b.omit.insert("coarse_labels"); }, {"missing key 'coarse_labels'"}},
      {"missing labels", [](Batch& b) { b.omit.insert("fine_labels"); b.omit.insert("coarse_labels"); },
       {"missing key 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100)", "b'data'"}},
  };
  for (const Style style : kStyles) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(style_name(style)) + ": " + c.name);
      Batch b = good;
      c.change(b);
      const auto bytes = write_batch(style, b);
      std::vector<std::string> needles = c.needles;
      needles.push_back("'" + std::string(kWhat) + "': ");
      needles.push_back("(pickle value at byte ");
      expect_error([&] { read_batch(bytes); }, needles);
    }
  }
}

TEST(PickleCifarErrors, WrongValueKinds) {
  auto one = [](const std::function<void(Writer&)>& value) {
    Writer w(Style::kProto3);
    w.dict(2, [&](size_t i) {
      w.bytes(i == 0 ? "data" : "labels");
      if (i == 0) {
        value(w);
      } else {
        w.list(0, [](size_t) {});
      }
    });
    return w.finish();
  };
  expect_error([&] { read_batch(one([](Writer& w) { w.list(0, [](size_t) {}); })); },
               {"key 'data': expected a numpy array, found list"});
  expect_error([&] { read_batch(one([](Writer& w) { w.global("numpy", "ndarray"); })); },
               {"key 'data': expected a numpy array, found global"});
  // An object array: dtype 'O8', data a list.
  expect_error(
      [&] {
        read_batch(one([](Writer& w) {
          w.global("numpy.core.multiarray", "_reconstruct");
          w.global("numpy", "ndarray");
          w.tuple_of_ints({0});
          w.bytes("b");
          w.emitter().op(0x87).op('R').op('(');
          w.integer(1);
          w.tuple_of_ints({0});
          w.dtype("O8", '|');
          w.boolean(false);
          w.list(0, [](size_t) {});
          w.emitter().op('t').op('b');
        }));
      },
      {"key 'data': unsupported numpy dtype 'O8' (object arrays are not supported)"});
  // A masked array is not a plain ndarray.
  expect_error(
      [&] {
        read_batch(one([](Writer& w) {
          w.global("numpy.core.multiarray", "_reconstruct");
          w.global("numpy.ma.core", "MaskedArray");
          w.tuple_of_ints({0});
          w.bytes("b");
          w.emitter().op(0x87).op('R');
        }));
      },
      {"key 'data': expected a numpy.ndarray"});
  Writer labels_str(Style::kProto3);
  labels_str.dict(2, [&](size_t i) {
    labels_str.bytes(i == 0 ? "data" : "labels");
    if (i == 0) {
      labels_str.array({0, kImageBytes}, "u1", '|', "", /*fortran=*/false);
    } else {
      labels_str.bytes("oops");
    }
  });
  const auto bytes = labels_str.finish();
  expect_error([&] { read_batch(bytes); }, {"key 'labels': expected a list of int labels, found bytes b'oops'"});
}

// ------------------------------------------------------------------ against Python + numpy

constexpr const char* kPython = "/usr/bin/python3";

// Writes CIFAR-like pickles with the real pickler (protocols 1-5) plus the
// expected raw values; see the test below.
constexpr const char* kMakePickles = R"PY(
import os, pickle, sys
import numpy as np
out = sys.argv[1]
rng = np.random.RandomState(1234)
n = 7
data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
labels = [int(x) for x in rng.randint(0, 10, size=n)]
fine = [int(x) for x in rng.randint(0, 100, size=n)]
coarse = [int(x) for x in rng.randint(0, 20, size=n)]
names = [b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog', b'frog', b'horse', b'ship', b'truck']
def save(name, raw):
    with open(os.path.join(out, name), 'wb') as f:
        f.write(raw)
save('pixels.raw', data.tobytes())
save('labels.raw', np.array(labels, '<i8').tobytes())
save('fine.raw', np.array(fine, '<i8').tobytes())
save('coarse.raw', np.array(coarse, '<i8').tobytes())
files = [b'img_%d.png' % i for i in range(n)]
shared = [1, 2]
values = {'int': -5, 'big': 2**40, 'neg': -2**62, 'float': 1.5, 'none': None, 'true': True, 'bytes': b'\x00\xff',
          'empty': b'', 'text': 'caf\u00e9', 'tuple': (1, 'a', b'b'), 'nested': [[1], [2, [3]]],
          'shared': (shared, shared)}
for p in (1, 2, 3, 4, 5):
    batch10 = {b'batch_label': b'training batch 1 of 5', b'labels': labels, b'data': data, b'filenames': files}
    batch100 = {b'filenames': files, b'batch_label': b'training batch 1 of 1', b'fine_labels': fine,
                b'coarse_labels': coarse, b'data': data}
    fortran = dict(batch10)
    fortran[b'data'] = np.asfortranarray(data)
    strkeys = {'labels': labels, 'data': data.reshape(n, 3, 32, 32)}
    save('batch10_p%d.pkl' % p, pickle.dumps(batch10, protocol=p))
    save('batch100_p%d.pkl' % p, pickle.dumps(batch100, protocol=p))
    save('fortran_p%d.pkl' % p, pickle.dumps(fortran, protocol=p))
    save('strkeys_p%d.pkl' % p, pickle.dumps(strkeys, protocol=p))
    meta10 = {b'num_cases_per_batch': 10000, b'label_names': names, b'num_vis': 3072}
    save('meta10_p%d.pkl' % p, pickle.dumps(meta10, protocol=p))
    save('meta100_p%d.pkl' % p, pickle.dumps({b'fine_label_names': [b'apple', b'aquarium_fish'],
                                              b'coarse_label_names': [b'fish', b'flowers']}, protocol=p))
    save('values_p%d.pkl' % p, pickle.dumps(values, protocol=p))
save('values_p0.pkl', pickle.dumps([1, -2, 2**40, 1.5, None, True, False, [3]], protocol=0))
print('numpy', np.__version__)
)PY";

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<int64_t> read_int64s(const std::string& path) {
  const std::vector<uint8_t> raw = read_file(path);
  std::vector<int64_t> values(raw.size() / 8);
  for (size_t i = 0; i < values.size(); ++i) {
    uint64_t v = 0;
    for (int b = 7; b >= 0; --b) v = (v << 8) | raw[8 * i + static_cast<size_t>(b)];
    values[i] = static_cast<int64_t>(v);
  }
  return values;
}

// A directory removed at exit.
struct ScratchDir {
  std::string path;
  ~ScratchDir() {
    std::error_code ignored;
    if (!path.empty()) std::filesystem::remove_all(path, ignored);
  }
};

// Runs kMakePickles once into a fresh directory; "" (and a test failure) if it cannot.
const std::string& python_pickles() {
  static const ScratchDir dir{[] {
    if (::access(kPython, X_OK) != 0) {
      ADD_FAILURE() << kPython << " is missing; python3 with numpy is required (the setup installs python3-numpy)";
      return std::string();
    }
    std::string tmpl = ::testing::TempDir() + "liondg-pickle-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed for " << tmpl;
      return std::string();
    }
    {
      std::ofstream script(tmpl + "/make.py");
      script << kMakePickles;
    }
    const std::string command = std::string(kPython) + " " + tmpl + "/make.py " + tmpl + " 2>&1";
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) {
      ADD_FAILURE() << "popen failed: " << command;
      return std::string();
    }
    std::string output;
    char buf[256];
    while (std::fgets(buf, sizeof(buf), pipe) != nullptr) output += buf;
    const int status = ::pclose(pipe);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ADD_FAILURE() << command << " failed (python3 with numpy is required; the setup installs python3-numpy):\n"
                    << output;
      std::error_code ignored;
      std::filesystem::remove_all(tmpl, ignored);
      return std::string();
    }
    return tmpl;
  }()};
  return dir.path;
}

TEST(PickleNumpy, ReadsCifarPicklesWrittenByPython) {
  const std::string dir = python_pickles();
  ASSERT_FALSE(dir.empty());
  const std::vector<uint8_t> pixels = read_file(dir + "/pixels.raw");
  const std::vector<int64_t> labels = read_int64s(dir + "/labels.raw");
  const std::vector<int64_t> fine = read_int64s(dir + "/fine.raw");
  const std::vector<int64_t> coarse = read_int64s(dir + "/coarse.raw");
  ASSERT_EQ(pixels.size(), 7u * kImageBytes);
  for (const int p : {1, 2, 3, 4, 5}) {
    SCOPED_TRACE("protocol " + std::to_string(p));
    const std::string suffix = "_p" + std::to_string(p) + ".pkl";

    const CifarPickleBatch b10 = read_batch(read_file(dir + "/batch10" + suffix), "batch10" + suffix);
    EXPECT_EQ(b10.count, 7);
    EXPECT_EQ(b10.images, pixels);
    EXPECT_EQ(b10.labels, labels);
    EXPECT_TRUE(b10.coarse_labels.empty());

    const CifarPickleBatch b100 = read_batch(read_file(dir + "/batch100" + suffix));
    EXPECT_EQ(b100.count, 7);
    EXPECT_EQ(b100.images, pixels);
    EXPECT_EQ(b100.labels, fine);
    EXPECT_EQ(b100.coarse_labels, coarse);

    const CifarPickleBatch s = read_batch(read_file(dir + "/strkeys" + suffix));
    EXPECT_EQ(s.images, pixels);
    EXPECT_EQ(s.labels, labels);

    const auto fortran = read_file(dir + "/fortran" + suffix);
    expect_error([&] { read_cifar_pickle_batch(fortran.data(), fortran.size(), "fortran" + suffix); },
                 {"'fortran" + suffix + "'", "expected a C-order array, found Fortran order"});
    const PickleDocument fdoc = parse(fortran);
    const PickleArray fa = pickle_ndarray(fdoc.root().get("data"));
    EXPECT_TRUE(fa.fortran_order);
    EXPECT_EQ(fa.shape, (std::vector<int64_t>{7, kImageBytes}));
    EXPECT_EQ(static_cast<uint8_t>(fa.data[1]), pixels[kImageBytes]);  // column-major: (1, 0) follows (0, 0)

    const auto meta10 = read_file(dir + "/meta10" + suffix);
    EXPECT_EQ(read_cifar_pickle_names(meta10.data(), meta10.size(), "label_names", "meta10"), kCifar10Names);
    const auto meta100 = read_file(dir + "/meta100" + suffix);
    EXPECT_EQ(read_cifar_pickle_names(meta100.data(), meta100.size(), "fine_label_names", "meta100"),
              (std::vector<std::string>{"apple", "aquarium_fish"}));
    EXPECT_EQ(read_cifar_pickle_names(meta100.data(), meta100.size(), "coarse_label_names", "meta100"),
              (std::vector<std::string>{"fish", "flowers"}));
  }
}

TEST(PickleNumpy, ReadsGenericValuesWrittenByPython) {
  const std::string dir = python_pickles();
  ASSERT_FALSE(dir.empty());
  for (const int p : {1, 2, 3, 4, 5}) {
    SCOPED_TRACE("protocol " + std::to_string(p));
    const PickleDocument doc = parse(read_file(dir + "/values_p" + std::to_string(p) + ".pkl"));
    const PickleValue& v = doc.root();
    EXPECT_EQ(v.get("int").as_int(), -5);
    EXPECT_EQ(v.get("big").as_int(), int64_t{1} << 40);
    EXPECT_EQ(v.get("neg").as_int(), -(int64_t{1} << 62));
    EXPECT_EQ(v.get("float").as_float(), 1.5);
    EXPECT_TRUE(v.get("none").is_none());
    EXPECT_TRUE(v.get("true").as_bool());
    EXPECT_EQ(v.get("bytes").as_bytes(), std::string("\x00\xff", 2));
    EXPECT_EQ(v.get("empty").as_bytes(), "");
    EXPECT_EQ(v.get("text").as_str(), "caf\xc3\xa9");
    EXPECT_EQ(v.get("tuple").repr(), "(1, 'a', b'b')");
    EXPECT_EQ(v.get("nested").repr(), "[[1], [2, [3]]]");
    EXPECT_EQ(&v.get("shared").at(0), &v.get("shared").at(1));
  }
  const PickleDocument p0 = parse(read_file(dir + "/values_p0.pkl"));
  EXPECT_EQ(p0.root().repr(), "[1, -2, 1099511627776, 1.5, None, True, False, [3]]");
}

}  // namespace
}  // namespace liondg
