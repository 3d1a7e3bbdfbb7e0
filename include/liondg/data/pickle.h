#pragma once
// A small, safe reader for the Python pickle subset of the CIFAR-10/100
// "python version" files (Python 2 cPickle and Python 3 pickles, protocols
// 0-5, with numpy arrays). It is a pickle VM over a value tree that never
// executes anything: a global such as `os.system` only becomes an opaque
// node. Truncated, malformed or hostile input throws DataError naming the file
// and the byte offset; memory and time are bounded by the input size.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace liondg {

namespace detail {
class PickleParser;
}  // namespace detail

/// One value of a decoded pickle. Values are owned by a PickleDocument and stay
/// valid while (a copy of) it lives. As in Python, containers may share
/// elements (memo references) and may even contain themselves.
///
/// Accessors check the kind and throw DataError ("'FILE': expected bytes,
/// found list (pickle value at byte 57)") on a mismatch.
class PickleValue {
 public:
  enum class Kind : uint8_t {
    kNone,
    kBool,
    kInt,     // fits int64 (larger integers are rejected while parsing)
    kFloat,
    kBytes,   // Python 2 str, Python 3 bytes or bytearray
    kStr,     // Python 2 unicode, Python 3 str; UTF-8 as stored in the pickle
    kTuple,
    kList,
    kDict,    // entries in insertion order; duplicate keys are kept
    kGlobal,  // a reference to a module attribute, "module.name"; never resolved
    kObject,  // an unexecuted call: global callable, argument tuple, BUILD state
  };

  /// A detached None; values of a document are made by the parser.
  PickleValue() = default;
  PickleValue(const PickleValue&) = delete;
  PickleValue& operator=(const PickleValue&) = delete;

  Kind kind() const { return kind_; }
  /// "None", "bool", "int", "float", "bytes", "str", "tuple", "list", "dict", "global", "object".
  static const char* kind_name(Kind kind);
  const char* kind_name() const { return kind_name(kind_); }
  /// Byte offset of the opcode that made the value.
  size_t offset() const { return offset_; }
  /// The name of the pickle's file as given to parse_pickle.
  const std::string& what() const;

  bool is_none() const { return kind_ == Kind::kNone; }
  /// Bytes or str.
  bool is_text() const { return kind_ == Kind::kBytes || kind_ == Kind::kStr; }

  bool as_bool() const;
  /// An int (or a bool: Python's bool is an int).
  int64_t as_int() const;
  /// A float or an int.
  double as_float() const;
  const std::string& as_bytes() const;
  /// UTF-8.
  const std::string& as_str() const;
  /// Bytes or str, as stored.
  const std::string& as_text() const;

  /// Tuple or list: number of elements; dict: number of entries.
  size_t size() const;
  /// Element `index` of a tuple or list.
  const PickleValue& at(size_t index) const;
  /// Key and value of entry `index` of a dict, in insertion order.
  const PickleValue& key_at(size_t index) const;
  const PickleValue& value_at(size_t index) const;
  /// Dict lookup by a bytes or str key equal to `key` (the last one if several
  /// match, as in Python); nullptr if absent. Throws unless this is a dict.
  const PickleValue* find(std::string_view key) const;
  /// Like `find`, but a missing key throws DataError listing the keys present.
  const PickleValue& get(std::string_view key) const;

  /// "module.name" of a global, or of the callable of an object.
  const std::string& global_name() const;
  /// The argument tuple of an object.
  const PickleValue& args() const;
  /// The BUILD state of an object; nullptr if it had none.
  const PickleValue* state() const;

  /// A Python-like rendering for messages, cut to about `max_chars` characters
  /// (nesting is cut at a few levels, so self-containing values are fine).
  std::string repr(size_t max_chars = 200) const;

  /// Throws DataError "'FILE': <message> (pickle value at byte N)".
  [[noreturn]] void fail(const std::string& message) const;

 private:
  friend class detail::PickleParser;

  [[noreturn]] void fail_kind(const char* expected) const;
  void repr_into(std::string& out, size_t max_chars, int depth) const;

  Kind kind_ = Kind::kNone;
  size_t offset_ = 0;
  const std::string* what_ = nullptr;
  int64_t int_ = 0;    // kBool, kInt
  double float_ = 0;   // kFloat
  std::string text_;   // kBytes, kStr; kGlobal and kObject: "module.name"
  // kTuple, kList: elements; kDict: key0, value0, key1, value1, ...;
  // kObject: {args tuple, state or nullptr}.
  std::vector<const PickleValue*> items_;
};

/// A decoded pickle. Owns all its values; copies share them (immutable).
class PickleDocument {
 public:
  /// The unpickled object.
  const PickleValue& root() const;
  /// The file name given to parse_pickle.
  const std::string& what() const;
  /// Number of values made while parsing.
  size_t value_count() const;

  struct Storage;

 private:
  friend class detail::PickleParser;
  explicit PickleDocument(std::shared_ptr<const Storage> storage) : storage_(std::move(storage)) {}
  std::shared_ptr<const Storage> storage_;
};

/// Limits on one pickle; exceeding one is a DataError. A CIFAR-100 `train`
/// file makes about 250k values; the limits bound memory to a few hundred MB
/// whatever the input.
inline constexpr size_t kPickleMaxValues = size_t{1} << 21;      // values made (about 100 bytes each)
inline constexpr size_t kPickleMaxStack = size_t{1} << 21;       // stack entries; memo entries
inline constexpr size_t kPickleMaxReferences = size_t{1} << 24;  // stack pushes in all (memo gets and DUP included)
inline constexpr size_t kPickleMaxNesting = 4096;                // open MARKs

/// Decodes the pickle `data[0, size)`. `what` names it in error messages (a
/// file name). Supported: protocols 0-5 except the text STRING/UNICODE
/// opcodes, persistent ids, extension codes, sets and out-of-band buffers.
/// Calls are not executed: REDUCE/NEWOBJ make kObject nodes, except
/// `_codecs.encode(str, 'latin1')` and `bytes()` (how Python 3 writes bytes
/// at protocol 2), which are evaluated to bytes. Trailing bytes after STOP
/// and a STOP with other than one value on the stack are errors.
PickleDocument parse_pickle(const uint8_t* data, size_t size, const std::string& what);

/// A numpy array found in a pickle.
struct PickleArray {
  std::string dtype;           // byte order + numpy type code: "|u1", "<i8", ">f4", ...
  char kind = 0;               // numpy kind: 'u', 'i', 'f', 'b', ...
  int64_t itemsize = 0;        // bytes per element
  std::vector<int64_t> shape;  // e.g. (N, 3072)
  bool fortran_order = false;
  int64_t numel = 0;           // product of `shape`
  std::string_view data;       // numel * itemsize raw bytes; points into the document
};

/// Interprets `value` as a pickled numpy.ndarray: the protocol 0-4 form
/// (`numpy.core.multiarray._reconstruct` or `numpy._core...`, REDUCE, BUILD
/// with (version, shape, dtype, is_fortran, raw bytes)) or the protocol 5 form
/// (`numpy.core.numeric._frombuffer(buffer, dtype, shape, order)`). Checks that
/// the byte count is the product of the shape times the item size. Throws
/// DataError for anything else (object arrays included).
PickleArray pickle_ndarray(const PickleValue& value);

/// One CIFAR pickle batch file, decoded.
struct CifarPickleBatch {
  int64_t count = 0;                  // N
  std::vector<uint8_t> images;        // N*3*32*32 bytes, (N,C,H,W) order as in the file
  std::vector<int64_t> labels;        // CIFAR-10 "labels" or CIFAR-100 "fine_labels"
  std::vector<int64_t> coarse_labels; // CIFAR-100 "coarse_labels" (empty for CIFAR-10)
};

/// Decodes a CIFAR-10 `data_batch_*`/`test_batch` or CIFAR-100 `train`/`test`
/// file: a dict (bytes or str keys) with "data", a uint8 C-order array of shape
/// (N, 3072), (N, 3, 32, 32) or (N*3072,), and "labels" (CIFAR-10) or
/// "fine_labels" plus "coarse_labels" (CIFAR-100): lists (or 1-D integer
/// arrays) of N ints in [0, 100) and [0, 20). Throws DataError naming `what`.
CifarPickleBatch read_cifar_pickle_batch(const uint8_t* data, size_t size, const std::string& what);

/// A list of names from a meta file (key e.g. "label_names", "fine_label_names").
/// The entries may be bytes or str; they are returned as stored (UTF-8 for str).
std::vector<std::string> read_cifar_pickle_names(const uint8_t* data, size_t size, const std::string& key,
                                                 const std::string& what);

}  // namespace liondg
