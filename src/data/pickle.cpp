// A pickle VM over a value tree (see pickle.h) and the CIFAR batch/meta
// readers built on it. Nothing is executed: globals are names, calls are nodes.

#include <liondg/data/pickle.h>
#include <liondg/errors.h>

#include <charconv>
#include <cstring>
#include <deque>
#include <limits>
#include <unordered_map>

namespace liondg {

struct PickleDocument::Storage {
  std::string what;
  std::deque<PickleValue> values;  // a deque: elements never move
  const PickleValue* root = nullptr;
};

namespace {

using Kind = PickleValue::Kind;

constexpr int kMaxProtocol = 5;
constexpr int kReprMaxDepth = 6;
constexpr size_t kMaxKeysListed = 12;
constexpr int64_t kMaxItemsize = int64_t{1} << 30;

constexpr int64_t kCifarChannels = 3;
constexpr int64_t kCifarSide = 32;
constexpr int64_t kCifarImageBytes = kCifarChannels * kCifarSide * kCifarSide;
constexpr int64_t kCifarFineClasses = 100;
constexpr int64_t kCifarCoarseClasses = 20;

// Opcodes (pickletools' names).
namespace op {
constexpr uint8_t kMark = '(';
constexpr uint8_t kStop = '.';
constexpr uint8_t kPop = '0';
constexpr uint8_t kPopMark = '1';
constexpr uint8_t kDup = '2';
constexpr uint8_t kFloat = 'F';
constexpr uint8_t kInt = 'I';
constexpr uint8_t kBinInt = 'J';
constexpr uint8_t kBinInt1 = 'K';
constexpr uint8_t kLong = 'L';
constexpr uint8_t kBinInt2 = 'M';
constexpr uint8_t kNone = 'N';
constexpr uint8_t kPersId = 'P';
constexpr uint8_t kBinPersId = 'Q';
constexpr uint8_t kReduce = 'R';
constexpr uint8_t kString = 'S';
constexpr uint8_t kBinString = 'T';
constexpr uint8_t kShortBinString = 'U';
constexpr uint8_t kUnicode = 'V';
constexpr uint8_t kBinUnicode = 'X';
constexpr uint8_t kAppend = 'a';
constexpr uint8_t kBuild = 'b';
constexpr uint8_t kGlobal = 'c';
constexpr uint8_t kDict = 'd';
constexpr uint8_t kEmptyDict = '}';
constexpr uint8_t kAppends = 'e';
constexpr uint8_t kGet = 'g';
constexpr uint8_t kBinGet = 'h';
constexpr uint8_t kInst = 'i';
constexpr uint8_t kLongBinGet = 'j';
constexpr uint8_t kList = 'l';
constexpr uint8_t kEmptyList = ']';
constexpr uint8_t kObj = 'o';
constexpr uint8_t kPut = 'p';
constexpr uint8_t kBinPut = 'q';
constexpr uint8_t kLongBinPut = 'r';
constexpr uint8_t kSetItem = 's';
constexpr uint8_t kTuple = 't';
constexpr uint8_t kEmptyTuple = ')';
constexpr uint8_t kSetItems = 'u';
constexpr uint8_t kBinFloat = 'G';
constexpr uint8_t kProto = 0x80;
constexpr uint8_t kNewObj = 0x81;
constexpr uint8_t kExt1 = 0x82;
constexpr uint8_t kExt2 = 0x83;
constexpr uint8_t kExt4 = 0x84;
constexpr uint8_t kTuple1 = 0x85;
constexpr uint8_t kTuple2 = 0x86;
constexpr uint8_t kTuple3 = 0x87;
constexpr uint8_t kNewTrue = 0x88;
constexpr uint8_t kNewFalse = 0x89;
constexpr uint8_t kLong1 = 0x8a;
constexpr uint8_t kLong4 = 0x8b;
constexpr uint8_t kBinBytes = 'B';
constexpr uint8_t kShortBinBytes = 'C';
constexpr uint8_t kShortBinUnicode = 0x8c;
constexpr uint8_t kBinUnicode8 = 0x8d;
constexpr uint8_t kBinBytes8 = 0x8e;
constexpr uint8_t kEmptySet = 0x8f;
constexpr uint8_t kAddItems = 0x90;
constexpr uint8_t kFrozenSet = 0x91;
constexpr uint8_t kNewObjEx = 0x92;
constexpr uint8_t kStackGlobal = 0x93;
constexpr uint8_t kMemoize = 0x94;
constexpr uint8_t kFrame = 0x95;
constexpr uint8_t kByteArray8 = 0x96;
constexpr uint8_t kNextBuffer = 0x97;
constexpr uint8_t kReadonlyBuffer = 0x98;
}  // namespace op

// pickletools' name of a known opcode, nullptr for an unknown byte.
const char* opcode_name(uint8_t code) {
  switch (code) {
    case op::kMark: return "MARK";
    case op::kStop: return "STOP";
    case op::kPop: return "POP";
    case op::kPopMark: return "POP_MARK";
    case op::kDup: return "DUP";
    case op::kFloat: return "FLOAT";
    case op::kInt: return "INT";
    case op::kBinInt: return "BININT";
    case op::kBinInt1: return "BININT1";
    case op::kLong: return "LONG";
    case op::kBinInt2: return "BININT2";
    case op::kNone: return "NONE";
    case op::kPersId: return "PERSID";
    case op::kBinPersId: return "BINPERSID";
    case op::kReduce: return "REDUCE";
    case op::kString: return "STRING";
    case op::kBinString: return "BINSTRING";
    case op::kShortBinString: return "SHORT_BINSTRING";
    case op::kUnicode: return "UNICODE";
    case op::kBinUnicode: return "BINUNICODE";
    case op::kAppend: return "APPEND";
    case op::kBuild: return "BUILD";
    case op::kGlobal: return "GLOBAL";
    case op::kDict: return "DICT";
    case op::kEmptyDict: return "EMPTY_DICT";
    case op::kAppends: return "APPENDS";
    case op::kGet: return "GET";
    case op::kBinGet: return "BINGET";
    case op::kInst: return "INST";
    case op::kLongBinGet: return "LONG_BINGET";
    case op::kList: return "LIST";
    case op::kEmptyList: return "EMPTY_LIST";
    case op::kObj: return "OBJ";
    case op::kPut: return "PUT";
    case op::kBinPut: return "BINPUT";
    case op::kLongBinPut: return "LONG_BINPUT";
    case op::kSetItem: return "SETITEM";
    case op::kTuple: return "TUPLE";
    case op::kEmptyTuple: return "EMPTY_TUPLE";
    case op::kSetItems: return "SETITEMS";
    case op::kBinFloat: return "BINFLOAT";
    case op::kProto: return "PROTO";
    case op::kNewObj: return "NEWOBJ";
    case op::kExt1: return "EXT1";
    case op::kExt2: return "EXT2";
    case op::kExt4: return "EXT4";
    case op::kTuple1: return "TUPLE1";
    case op::kTuple2: return "TUPLE2";
    case op::kTuple3: return "TUPLE3";
    case op::kNewTrue: return "NEWTRUE";
    case op::kNewFalse: return "NEWFALSE";
    case op::kLong1: return "LONG1";
    case op::kLong4: return "LONG4";
    case op::kBinBytes: return "BINBYTES";
    case op::kShortBinBytes: return "SHORT_BINBYTES";
    case op::kShortBinUnicode: return "SHORT_BINUNICODE";
    case op::kBinUnicode8: return "BINUNICODE8";
    case op::kBinBytes8: return "BINBYTES8";
    case op::kEmptySet: return "EMPTY_SET";
    case op::kAddItems: return "ADDITEMS";
    case op::kFrozenSet: return "FROZENSET";
    case op::kNewObjEx: return "NEWOBJ_EX";
    case op::kStackGlobal: return "STACK_GLOBAL";
    case op::kMemoize: return "MEMOIZE";
    case op::kFrame: return "FRAME";
    case op::kByteArray8: return "BYTEARRAY8";
    case op::kNextBuffer: return "NEXT_BUFFER";
    case op::kReadonlyBuffer: return "READONLY_BUFFER";
    default: return nullptr;
  }
}

std::string hex_byte(uint8_t byte) {
  constexpr char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[byte >> 4] + kDigits[byte & 0xf];
}

// "'T' (BINSTRING)", "0x8c (SHORT_BINUNICODE)", "0xff".
std::string describe_opcode(uint8_t code) {
  const bool printable = code >= 0x20 && code < 0x7f;
  std::string s = printable ? std::string("'") + static_cast<char>(code) + "'" : hex_byte(code);
  if (const char* name = opcode_name(code)) s += std::string(" (") + name + ")";
  return s;
}

std::string single_quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// Whether `c` is one of `set` (never true for NUL).
bool one_of(char c, std::string_view set) { return c != '\0' && set.find(c) != std::string_view::npos; }

// Python-like quoted text; bytes get a b prefix. Stops once `out` reaches `limit`.
void append_quoted(std::string& out, const std::string& text, bool is_bytes, size_t limit) {
  constexpr char kDigits[] = "0123456789abcdef";
  if (is_bytes) out += 'b';
  out += '\'';
  for (const char ch : text) {
    if (out.size() >= limit) {
      out += "...";
      break;
    }
    const auto c = static_cast<uint8_t>(ch);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += ch;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f || (is_bytes && c >= 0x80)) {
      out += "\\x";
      out += kDigits[c >> 4];
      out += kDigits[c & 0xf];
    } else {
      out += ch;
    }
  }
  out += '\'';
}

// The keys of a dict, for messages: "'data', 'labels'" (the first few).
std::string dict_keys(const PickleValue& dict) {
  std::string keys;
  for (size_t i = 0; i < dict.size(); ++i) {
    if (i == kMaxKeysListed) return keys + ", ...";
    keys += (i > 0 ? ", " : "") + dict.key_at(i).repr(/*max_chars=*/40);
  }
  return keys.empty() ? "none" : keys;
}

}  // namespace

// ------------------------------------------------------------------ PickleValue

const char* PickleValue::kind_name(Kind kind) {
  switch (kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kBytes: return "bytes";
    case Kind::kStr: return "str";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kObject: return "object";
  }
  return "?";
}

const std::string& PickleValue::what() const {
  static const std::string kNoName;
  return what_ != nullptr ? *what_ : kNoName;
}

void PickleValue::fail(const std::string& message) const {
  throw DataError(single_quoted(what()) + ": " + message + " (pickle value at byte " + std::to_string(offset_) + ")");
}

void PickleValue::fail_kind(const char* expected) const {
  fail(std::string("expected ") + expected + ", found " + kind_name() + " " + repr(/*max_chars=*/60));
}

bool PickleValue::as_bool() const {
  if (kind_ != Kind::kBool) fail_kind("a bool");
  return int_ != 0;
}

int64_t PickleValue::as_int() const {
  if (kind_ != Kind::kInt && kind_ != Kind::kBool) fail_kind("an int");
  return int_;
}

double PickleValue::as_float() const {
  if (kind_ == Kind::kInt) return static_cast<double>(int_);
  if (kind_ != Kind::kFloat) fail_kind("a float");
  return float_;
}

const std::string& PickleValue::as_bytes() const {
  if (kind_ != Kind::kBytes) fail_kind("bytes");
  return text_;
}

const std::string& PickleValue::as_str() const {
  if (kind_ != Kind::kStr) fail_kind("a str");
  return text_;
}

const std::string& PickleValue::as_text() const {
  if (!is_text()) fail_kind("bytes or a str");
  return text_;
}

size_t PickleValue::size() const {
  if (kind_ == Kind::kTuple || kind_ == Kind::kList) return items_.size();
  if (kind_ == Kind::kDict) return items_.size() / 2;
  fail_kind("a tuple, list or dict");
}

const PickleValue& PickleValue::at(size_t index) const {
  if (kind_ != Kind::kTuple && kind_ != Kind::kList) fail_kind("a tuple or list");
  if (index >= items_.size()) {
    fail("index " + std::to_string(index) + " out of range for a " + kind_name() + " of " +
         std::to_string(items_.size()) + " elements");
  }
  return *items_[index];
}

const PickleValue& PickleValue::key_at(size_t index) const {
  if (kind_ != Kind::kDict) fail_kind("a dict");
  if (index >= items_.size() / 2) {
    fail("entry " + std::to_string(index) + " out of range for a dict of " + std::to_string(items_.size() / 2) +
         " entries");
  }
  return *items_[2 * index];
}

const PickleValue& PickleValue::value_at(size_t index) const {
  key_at(index);  // checks
  return *items_[2 * index + 1];
}

const PickleValue* PickleValue::find(std::string_view key) const {
  if (kind_ != Kind::kDict) fail_kind("a dict");
  for (size_t i = items_.size(); i >= 2; i -= 2) {
    const PickleValue& k = *items_[i - 2];
    if (k.is_text() && k.text_ == key) return items_[i - 1];
  }
  return nullptr;
}

const PickleValue& PickleValue::get(std::string_view key) const {
  if (const PickleValue* v = find(key)) return *v;
  fail("missing key " + single_quoted(key) + " (keys: " + dict_keys(*this) + ")");
}

const std::string& PickleValue::global_name() const {
  if (kind_ != Kind::kGlobal && kind_ != Kind::kObject) fail_kind("a global or an object");
  return text_;
}

const PickleValue& PickleValue::args() const {
  if (kind_ != Kind::kObject) fail_kind("an object");
  return *items_[0];
}

const PickleValue* PickleValue::state() const {
  if (kind_ != Kind::kObject) fail_kind("an object");
  return items_[1];
}

std::string PickleValue::repr(size_t max_chars) const {
  std::string out;
  repr_into(out, max_chars, /*depth=*/0);
  if (out.size() > max_chars + 3) {
    out.resize(max_chars);
    out += "...";
  }
  return out;
}

void PickleValue::repr_into(std::string& out, size_t max_chars, int depth) const {
  if (out.size() >= max_chars) return;
  switch (kind_) {
    case Kind::kNone: out += "None"; return;
    case Kind::kBool: out += int_ != 0 ? "True" : "False"; return;
    case Kind::kInt: out += std::to_string(int_); return;
    case Kind::kFloat: {
      char buf[32];
      const auto res = std::to_chars(buf, buf + sizeof(buf), float_);
      out.append(buf, res.ptr);
      return;
    }
    case Kind::kBytes:
    case Kind::kStr: append_quoted(out, text_, kind_ == Kind::kBytes, max_chars); return;
    case Kind::kGlobal: out += "<global " + text_ + ">"; return;
    default: break;
  }
  if (depth >= kReprMaxDepth) {
    out += "...";
    return;
  }
  const char* open = kind_ == Kind::kTuple ? "(" : kind_ == Kind::kList ? "[" : kind_ == Kind::kDict ? "{" : "";
  const char* close = kind_ == Kind::kTuple ? ")" : kind_ == Kind::kList ? "]" : kind_ == Kind::kDict ? "}" : "";
  if (kind_ == Kind::kObject) {
    out += text_;
    items_[0]->repr_into(out, max_chars, depth + 1);  // the argument tuple
    if (items_[1] != nullptr && out.size() < max_chars) {
      out += ".__setstate__(";
      items_[1]->repr_into(out, max_chars, depth + 1);
      out += ")";
    }
    return;
  }
  out += open;
  for (size_t i = 0; i < items_.size(); ++i) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    if (i > 0) out += kind_ == Kind::kDict && i % 2 == 1 ? ": " : ", ";
    items_[i]->repr_into(out, max_chars, depth + 1);
  }
  if (kind_ == Kind::kTuple && items_.size() == 1) out += ",";
  out += close;
}

// ------------------------------------------------------------------ PickleDocument

const PickleValue& PickleDocument::root() const { return *storage_->root; }
const std::string& PickleDocument::what() const { return storage_->what; }
size_t PickleDocument::value_count() const { return storage_->values.size(); }

// ------------------------------------------------------------------ the VM

namespace detail {

class PickleParser {
 public:
  PickleParser(const uint8_t* data, size_t size, const std::string& what)
      : data_(data), size_(size), storage_(std::make_shared<PickleDocument::Storage>()) {
    storage_->what = what;
  }

  PickleDocument run() {
    if (data_ == nullptr && size_ > 0) throw DataError(single_quoted(storage_->what) + ": no pickle data");
    while (pos_ < size_) {
      op_pos_ = pos_;
      op_ = data_[pos_++];
      if (op_ == op::kStop) {
        finish();
        return PickleDocument(std::move(storage_));
      }
      step();
    }
    throw DataError(single_quoted(storage_->what) + ": pickle truncated at byte " + std::to_string(size_) +
                    " (the input ends before the STOP opcode)");
  }

 private:
  // ---- errors

  [[noreturn]] void fail(const std::string& message) const {
    throw DataError(single_quoted(storage_->what) + ": invalid pickle at byte " + std::to_string(op_pos_) + " (opcode " +
                    describe_opcode(op_) + "): " + message);
  }

  [[noreturn]] void truncated(uint64_t needed) const {
    throw DataError(single_quoted(storage_->what) + ": pickle truncated at byte " + std::to_string(pos_) + " (opcode " +
                    describe_opcode(op_) + " at byte " + std::to_string(op_pos_) + " needs " +
                    std::to_string(needed) + " more bytes, " + std::to_string(size_ - pos_) + " left)");
  }

  // ---- input

  const uint8_t* take(uint64_t n) {
    if (n > size_ - pos_) truncated(n);
    const uint8_t* p = data_ + pos_;
    pos_ += static_cast<size_t>(n);
    return p;
  }

  uint64_t read_le(int bytes) {
    const uint8_t* p = take(static_cast<uint64_t>(bytes));
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
  }

  // A '\n'-terminated argument of a text opcode, without the newline.
  std::string_view read_line() {
    const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (nl == nullptr) {
      throw DataError(single_quoted(storage_->what) + ": pickle truncated at byte " + std::to_string(size_) + " (opcode " +
                      describe_opcode(op_) + " at byte " + std::to_string(op_pos_) +
                      " needs a newline-terminated argument)");
    }
    const size_t n = static_cast<size_t>(static_cast<const uint8_t*>(nl) - (data_ + pos_));
    std::string_view line(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n + 1;
    return line;
  }

  std::string read_string(uint64_t n) {
    const uint8_t* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }

  // ---- values and the stack

  PickleValue* make(Kind kind) {
    if (storage_->values.size() >= kPickleMaxValues) {
      fail("more than " + std::to_string(kPickleMaxValues) + " values (size limit)");
    }
    PickleValue& v = storage_->values.emplace_back();
    v.kind_ = kind;
    v.offset_ = op_pos_;
    v.what_ = &storage_->what;
    return &v;
  }

  PickleValue* make_int(Kind kind, int64_t value) {
    PickleValue* v = make(kind);
    v->int_ = value;
    return v;
  }

  PickleValue* make_text(Kind kind, std::string text) {
    PickleValue* v = make(kind);
    v->text_ = std::move(text);
    return v;
  }

  void push(PickleValue* v) {
    if (stack_.size() >= kPickleMaxStack) {
      fail("stack deeper than " + std::to_string(kPickleMaxStack) + " (size limit)");
    }
    if (++references_ > kPickleMaxReferences) {
      fail("more than " + std::to_string(kPickleMaxReferences) + " stack pushes (size limit)");
    }
    stack_.push_back(v);
  }

  // The current MARK's position: values below it are out of reach.
  size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }

  void need(size_t n) const {
    if (stack_.size() < fence() + n) {
      fail("stack underflow (needs " + std::to_string(n) + " value" + (n == 1 ? "" : "s") + " above the " +
           (marks_.empty() ? "stack bottom" : "last MARK") + ", has " + std::to_string(stack_.size() - fence()) + ")");
    }
  }

  PickleValue* pop() {
    need(1);
    PickleValue* v = stack_.back();
    stack_.pop_back();
    return v;
  }

  PickleValue* top() const {
    need(1);
    return stack_.back();
  }

  // Pops the last MARK; returns its position (the first value above it).
  size_t pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack (stack underflow)");
    const size_t mark = marks_.back();
    marks_.pop_back();
    return mark;
  }

  // A tuple/list of stack_[from, end), which is removed.
  PickleValue* collect(Kind kind, size_t from) {
    PickleValue* v = make(kind);
    v->items_.assign(stack_.begin() + static_cast<std::ptrdiff_t>(from), stack_.end());
    stack_.resize(from);
    return v;
  }

  PickleValue* pop_tuple(size_t n) {
    need(n);
    return collect(Kind::kTuple, stack_.size() - n);
  }

  void check_key(const PickleValue& key) const {
    if (key.kind_ == Kind::kList || key.kind_ == Kind::kDict) {
      fail(std::string("unhashable dict key (a ") + key.kind_name() + ")");
    }
  }

  void add_items(PickleValue& dict, size_t from) {
    if ((stack_.size() - from) % 2 != 0) fail("odd number of values for dict keys and values");
    for (size_t i = from; i < stack_.size(); i += 2) {
      check_key(*stack_[i]);
      dict.items_.push_back(stack_[i]);
      dict.items_.push_back(stack_[i + 1]);
    }
    stack_.resize(from);
  }

  PickleValue* memo_get(uint64_t index) const {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail("bad memo index " + std::to_string(index) + " (never stored)");
    return it->second;
  }

  void memo_put(uint64_t index) {
    PickleValue* v = top();
    if (memo_.size() >= kPickleMaxStack && memo_.count(index) == 0) {
      fail("more than " + std::to_string(kPickleMaxStack) + " memo entries (size limit)");
    }
    memo_[index] = v;
  }

  uint64_t parse_memo_index(std::string_view text) const {
    uint64_t index = 0;
    const auto res = std::from_chars(text.data(), text.data() + text.size(), index);
    if (text.empty() || res.ec != std::errc() || res.ptr != text.data() + text.size()) {
      fail("bad memo index " + single_quoted(text));
    }
    return index;
  }

  int64_t parse_decimal(std::string_view text) const {
    int64_t value = 0;
    const auto res = std::from_chars(text.data(), text.data() + text.size(), value);
    if (res.ec == std::errc::result_out_of_range) fail("integer " + single_quoted(text) + " does not fit in 64 bits");
    if (text.empty() || res.ec != std::errc() || res.ptr != text.data() + text.size()) {
      fail("bad integer " + single_quoted(text));
    }
    return value;
  }

  // Little-endian two's complement of `n` bytes (LONG1, LONG4).
  int64_t decode_long(const uint8_t* p, uint64_t n) const {
    if (n == 0) return 0;
    const bool negative = (p[n - 1] & 0x80) != 0;
    constexpr uint64_t kWidth = 8;
    if (n > kWidth) {
      const uint8_t extension = negative ? 0xff : 0x00;
      for (uint64_t i = kWidth; i < n; ++i) {
        if (p[i] != extension) fail("integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
      }
      if (((p[kWidth - 1] & 0x80) != 0) != negative) fail("integer does not fit in 64 bits");
    }
    uint64_t bits = negative ? ~uint64_t{0} : 0;
    for (uint64_t i = 0; i < n && i < kWidth; ++i) {
      bits &= ~(uint64_t{0xff} << (8 * i));
      bits |= uint64_t{p[i]} << (8 * i);
    }
    int64_t value = 0;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }

  // Latin-1 bytes of a UTF-8 str whose characters are all < 256.
  std::string latin1_encode(const PickleValue& str) const {
    const std::string& s = str.text_;
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<uint8_t>(s[i]);
      if (c < 0x80) {
        out += static_cast<char>(c);
      } else if ((c == 0xc2 || c == 0xc3) && i + 1 < s.size() && (static_cast<uint8_t>(s[i + 1]) & 0xc0) == 0x80) {
        out += static_cast<char>(((c & 0x03) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3f));
        ++i;
      } else {
        fail("_codecs.encode: the str has invalid UTF-8 or a character outside latin-1 at byte " + std::to_string(i));
      }
    }
    derived_bytes_ += out.size();
    if (derived_bytes_ > size_) fail("_codecs.encode results exceed the input size (size limit)");
    return out;
  }

  // REDUCE and NEWOBJ: a call, never executed. `_codecs.encode(str, 'latin1')`
  // and `bytes()` are how Python 3 writes bytes at protocol 2: evaluated.
  PickleValue* call(const PickleValue& callable, PickleValue* args, const char* what) {
    if (callable.kind_ != Kind::kGlobal) {
      fail(std::string(what) + " of a " + callable.kind_name() + ", not of a global");
    }
    if (args->kind_ != Kind::kTuple) {
      fail(std::string(what) + " arguments are a " + args->kind_name() + ", not a tuple");
    }
    const std::string& name = callable.text_;
    if (op_ == op::kReduce && name == "_codecs.encode") {
      const auto& a = args->items_;
      if (a.size() != 2 || a[0]->kind_ != Kind::kStr || !a[1]->is_text() ||
          (a[1]->text_ != "latin1" && a[1]->text_ != "latin-1")) {
        fail("unsupported _codecs.encode call " + args->repr(/*max_chars=*/80) + " (expected (str, 'latin1'))");
      }
      return make_text(Kind::kBytes, latin1_encode(*a[0]));
    }
    if (op_ == op::kReduce && (name == "__builtin__.bytes" || name == "builtins.bytes") && args->items_.empty()) {
      return make(Kind::kBytes);
    }
    PickleValue* v = make(Kind::kObject);
    v->text_ = name;
    v->items_ = {args, nullptr};
    return v;
  }

  void finish() {
    if (!marks_.empty()) fail(std::to_string(marks_.size()) + " MARK(s) still open at STOP");
    if (stack_.size() != 1) {
      fail("STOP with " + std::to_string(stack_.size()) + " values on the stack (expected exactly 1)");
    }
    if (pos_ != size_) fail(std::to_string(size_ - pos_) + " trailing bytes after STOP");
    storage_->root = stack_[0];
  }

  void step() {
    switch (op_) {
      // ---- framing and protocol
      case op::kProto: {
        const uint64_t version = read_le(/*bytes=*/1);
        if (version > kMaxProtocol) {
          fail("unsupported pickle protocol " + std::to_string(version) + " (this reader knows 0 to " +
               std::to_string(kMaxProtocol) + ")");
        }
        return;
      }
      case op::kFrame: {
        const uint64_t length = read_le(/*bytes=*/8);
        if (length > size_ - pos_) truncated(length);
        return;  // frames only group opcodes; the stream is read as one
      }
      // ---- stack manipulation
      case op::kMark:
        if (marks_.size() >= kPickleMaxNesting) {
          fail("more than " + std::to_string(kPickleMaxNesting) + " nested MARKs (nesting limit)");
        }
        marks_.push_back(stack_.size());
        return;
      case op::kPop:
        if (!marks_.empty() && marks_.back() == stack_.size()) {
          marks_.pop_back();  // as CPython: POP right after MARK pops the mark
        } else {
          pop();
        }
        return;
      case op::kPopMark: stack_.resize(pop_mark()); return;
      case op::kDup: push(top()); return;
      // ---- scalars
      case op::kNone: push(make(Kind::kNone)); return;
      case op::kNewTrue: push(make_int(Kind::kBool, 1)); return;
      case op::kNewFalse: push(make_int(Kind::kBool, 0)); return;
      case op::kBinInt: {
        const auto bits = static_cast<uint32_t>(read_le(/*bytes=*/4));
        int32_t value = 0;
        std::memcpy(&value, &bits, sizeof(value));
        push(make_int(Kind::kInt, value));
        return;
      }
      case op::kBinInt1: push(make_int(Kind::kInt, static_cast<int64_t>(read_le(/*bytes=*/1)))); return;
      case op::kBinInt2: push(make_int(Kind::kInt, static_cast<int64_t>(read_le(/*bytes=*/2)))); return;
      case op::kLong1:
      case op::kLong4: {
        const uint64_t n = op_ == op::kLong1 ? read_le(/*bytes=*/1) : read_le(/*bytes=*/4);
        if (op_ == op::kLong4 && n > uint64_t{std::numeric_limits<int32_t>::max()}) fail("negative LONG4 byte count");
        push(make_int(Kind::kInt, decode_long(take(n), n)));
        return;
      }
      case op::kInt: {
        const std::string_view text = read_line();
        if (text == "00" || text == "01") {
          push(make_int(Kind::kBool, text == "01" ? 1 : 0));  // protocol 0's False and True
        } else {
          push(make_int(Kind::kInt, parse_decimal(text)));
        }
        return;
      }
      case op::kLong: {
        std::string_view text = read_line();
        if (!text.empty() && text.back() == 'L') text.remove_suffix(1);
        push(make_int(Kind::kInt, parse_decimal(text)));
        return;
      }
      case op::kBinFloat: {
        const uint8_t* p = take(/*n=*/8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];  // big-endian
        PickleValue* v = make(Kind::kFloat);
        std::memcpy(&v->float_, &bits, sizeof(bits));
        push(v);
        return;
      }
      case op::kFloat: {
        const std::string_view text = read_line();
        double value = 0;
        const auto res = std::from_chars(text.data(), text.data() + text.size(), value);
        if (text.empty() || res.ec != std::errc() || res.ptr != text.data() + text.size()) {
          fail("bad float " + single_quoted(text));
        }
        PickleValue* v = make(Kind::kFloat);
        v->float_ = value;
        push(v);
        return;
      }
      // ---- bytes and strings
      case op::kBinString: {
        const auto bits = static_cast<uint32_t>(read_le(/*bytes=*/4));
        if (bits > uint32_t{std::numeric_limits<int32_t>::max()}) fail("negative BINSTRING byte count");
        push(make_text(Kind::kBytes, read_string(bits)));
        return;
      }
      case op::kShortBinString:
      case op::kShortBinBytes: push(make_text(Kind::kBytes, read_string(read_le(/*bytes=*/1)))); return;
      case op::kBinBytes: push(make_text(Kind::kBytes, read_string(read_le(/*bytes=*/4)))); return;
      case op::kBinBytes8:
      case op::kByteArray8: push(make_text(Kind::kBytes, read_string(read_le(/*bytes=*/8)))); return;
      case op::kShortBinUnicode: push(make_text(Kind::kStr, read_string(read_le(/*bytes=*/1)))); return;
      case op::kBinUnicode: push(make_text(Kind::kStr, read_string(read_le(/*bytes=*/4)))); return;
      case op::kBinUnicode8: push(make_text(Kind::kStr, read_string(read_le(/*bytes=*/8)))); return;
      // ---- containers
      case op::kEmptyTuple: push(make(Kind::kTuple)); return;
      case op::kTuple1: push(pop_tuple(/*n=*/1)); return;
      case op::kTuple2: push(pop_tuple(/*n=*/2)); return;
      case op::kTuple3: push(pop_tuple(/*n=*/3)); return;
      case op::kTuple: push(collect(Kind::kTuple, pop_mark())); return;
      case op::kEmptyList: push(make(Kind::kList)); return;
      case op::kList: push(collect(Kind::kList, pop_mark())); return;
      case op::kEmptyDict: push(make(Kind::kDict)); return;
      case op::kDict: {
        const size_t mark = pop_mark();
        PickleValue* dict = make(Kind::kDict);
        add_items(*dict, mark);
        push(dict);
        return;
      }
      case op::kAppend: {
        PickleValue* value = pop();
        PickleValue* list = top();
        if (list->kind_ != Kind::kList) fail(std::string("APPEND to a ") + list->kind_name() + ", not a list");
        list->items_.push_back(value);
        return;
      }
      case op::kAppends: {
        const size_t mark = pop_mark();
        if (mark == 0 || mark - 1 < fence()) fail("APPENDS without a list below its MARK (stack underflow)");
        PickleValue* list = stack_[mark - 1];
        if (list->kind_ != Kind::kList) fail(std::string("APPENDS to a ") + list->kind_name() + ", not a list");
        list->items_.insert(list->items_.end(), stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
        stack_.resize(mark);
        return;
      }
      case op::kSetItem: {
        need(3);
        PickleValue* dict = stack_[stack_.size() - 3];
        if (dict->kind_ != Kind::kDict) fail(std::string("SETITEM on a ") + dict->kind_name() + ", not a dict");
        add_items(*dict, stack_.size() - 2);
        return;
      }
      case op::kSetItems: {
        const size_t mark = pop_mark();
        if (mark == 0 || mark - 1 < fence()) fail("SETITEMS without a dict below its MARK (stack underflow)");
        PickleValue* dict = stack_[mark - 1];
        if (dict->kind_ != Kind::kDict) fail(std::string("SETITEMS on a ") + dict->kind_name() + ", not a dict");
        add_items(*dict, mark);
        return;
      }
      // ---- memo
      case op::kPut: memo_put(parse_memo_index(read_line())); return;
      case op::kBinPut: memo_put(read_le(/*bytes=*/1)); return;
      case op::kLongBinPut: memo_put(read_le(/*bytes=*/4)); return;
      case op::kMemoize: memo_put(memo_.size()); return;
      case op::kGet: push(memo_get(parse_memo_index(read_line()))); return;
      case op::kBinGet: push(memo_get(read_le(/*bytes=*/1))); return;
      case op::kLongBinGet: push(memo_get(read_le(/*bytes=*/4))); return;
      // ---- globals and calls (never executed)
      case op::kGlobal: {
        const std::string_view module = read_line();
        const std::string_view name = read_line();
        push(make_text(Kind::kGlobal, std::string(module) + "." + std::string(name)));
        return;
      }
      case op::kStackGlobal: {
        PickleValue* name = pop();
        PickleValue* module = pop();
        if (module->kind_ != Kind::kStr || name->kind_ != Kind::kStr) {
          fail(std::string("STACK_GLOBAL needs two str, found ") + module->kind_name() + " and " + name->kind_name());
        }
        push(make_text(Kind::kGlobal, module->text_ + "." + name->text_));
        return;
      }
      case op::kReduce:
      case op::kNewObj: {
        PickleValue* args = pop();
        PickleValue* callable = pop();
        push(call(*callable, args, op_ == op::kReduce ? "REDUCE" : "NEWOBJ"));
        return;
      }
      case op::kBuild: {
        PickleValue* state = pop();
        PickleValue* object = top();
        if (object->kind_ != Kind::kObject) {
          fail(std::string("BUILD on a ") + object->kind_name() + " (only objects made by REDUCE/NEWOBJ take a state)");
        }
        if (object->items_[1] != nullptr) fail("BUILD on an object that already has a state");
        object->items_[1] = state;
        return;
      }
      case op::kString:
      case op::kUnicode:
      case op::kPersId:
      case op::kBinPersId:
      case op::kInst:
      case op::kObj:
      case op::kExt1:
      case op::kExt2:
      case op::kExt4:
      case op::kEmptySet:
      case op::kAddItems:
      case op::kFrozenSet:
      case op::kNewObjEx:
      case op::kNextBuffer:
      case op::kReadonlyBuffer: fail("unsupported opcode (not used by numpy/CIFAR pickles)");
      default: fail("unknown opcode");
    }
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  uint8_t op_ = 0;
  std::shared_ptr<PickleDocument::Storage> storage_;
  std::vector<PickleValue*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValue*> memo_;
  size_t references_ = 0;
  mutable size_t derived_bytes_ = 0;
};

}  // namespace detail

PickleDocument parse_pickle(const uint8_t* data, size_t size, const std::string& what) {
  return detail::PickleParser(data, size, what).run();
}

// ------------------------------------------------------------------ numpy arrays

namespace {

bool is_global(const PickleValue& v, std::initializer_list<const char*> names) {
  if (v.kind() != Kind::kGlobal && v.kind() != Kind::kObject) return false;
  for (const char* name : names) {
    if (v.global_name() == name) return true;
  }
  return false;
}

struct Dtype {
  std::string str;  // "|u1"
  char kind = 0;
  int64_t itemsize = 0;
};

// A pickled numpy.dtype: REDUCE(numpy.dtype, (typestr, align, copy)) + BUILD
// with a state tuple whose element 1 is the byte-order character.
Dtype parse_dtype(const PickleValue& v, const std::string& context) {
  if (v.kind() != Kind::kObject || !is_global(v, {"numpy.dtype"})) {
    v.fail(context + "expected a numpy.dtype, found " + v.repr(/*max_chars=*/80));
  }
  const PickleValue& args = v.args();
  if (args.size() < 1 || !args.at(0).is_text()) {
    v.fail(context + "numpy.dtype arguments " + args.repr() + " lack a type string");
  }
  const std::string& type = args.at(0).as_text();
  Dtype d;
  d.kind = type.empty() ? '\0' : type[0];
  size_t i = 1;
  int64_t size = 0;
  for (; i < type.size() && type[i] >= '0' && type[i] <= '9'; ++i) {
    size = size * 10 + (type[i] - '0');
    if (size > kMaxItemsize) v.fail(context + "numpy dtype " + single_quoted(type) + " has an absurd item size");
  }
  const bool known_kind = one_of(d.kind, "biufcmMSUV");
  if (!known_kind || i == 1 || size == 0 || (i < type.size() && type[i] != '[')) {
    v.fail(context + "unsupported numpy dtype " + single_quoted(type) +
           (d.kind == 'O' ? " (object arrays are not supported)" : ""));
  }
  d.itemsize = d.kind == 'U' ? size * 4 : size;  // 'U' counts UCS-4 characters
  char order = d.itemsize == 1 ? '|' : '=';
  if (const PickleValue* state = v.state()) {
    if (state->kind() != Kind::kTuple || state->size() < 2 || !state->at(1).is_text() ||
        state->at(1).as_text().size() != 1 || !one_of(state->at(1).as_text()[0], "<>|=")) {
      state->fail(context + "numpy dtype state " + state->repr(/*max_chars=*/80) +
                  " lacks a byte-order character at index 1");
    }
    order = state->at(1).as_text()[0];
  }
  d.str = std::string(1, order) + type;
  return d;
}

std::vector<int64_t> parse_shape(const PickleValue& v, const std::string& context) {
  if (v.kind() != Kind::kTuple && v.kind() != Kind::kList) {
    v.fail(context + "expected a shape tuple, found " + v.repr());
  }
  std::vector<int64_t> shape;
  for (size_t i = 0; i < v.size(); ++i) {
    const PickleValue& dim = v.at(i);
    if (dim.kind() != Kind::kInt || dim.as_int() < 0) v.fail(context + "bad array shape " + v.repr());
    shape.push_back(dim.as_int());
  }
  return shape;
}

PickleArray ndarray_of(const PickleValue& v, const std::string& context) {
  PickleArray a;
  const PickleValue* dtype = nullptr;
  const PickleValue* shape = nullptr;
  const PickleValue* data = nullptr;
  if (v.kind() == Kind::kObject &&
      is_global(v, {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"})) {
    const PickleValue& args = v.args();
    if (args.size() < 1 || !is_global(args.at(0), {"numpy.ndarray"}) || args.at(0).kind() != Kind::kGlobal) {
      v.fail(context + "expected a numpy.ndarray, found _reconstruct" + args.repr(/*max_chars=*/80));
    }
    const PickleValue* state = v.state();
    if (state == nullptr) v.fail(context + "numpy array without a state (no BUILD)");
    // (version, shape, dtype, is_fortran, data) or, older, without the version.
    if (state->kind() != Kind::kTuple || (state->size() != 5 && state->size() != 4)) {
      state->fail(context + "expected a numpy array state (version, shape, dtype, is_fortran, data), found " +
                  state->repr(/*max_chars=*/80));
    }
    const size_t first = state->size() - 4;
    shape = &state->at(first);
    dtype = &state->at(first + 1);
    const PickleValue& fortran = state->at(first + 2);
    if (fortran.kind() != Kind::kBool && fortran.kind() != Kind::kInt) {
      fortran.fail(context + "expected the array's is_fortran flag, found " + fortran.repr());
    }
    a.fortran_order = fortran.as_int() != 0;
    data = &state->at(first + 3);
  } else if (v.kind() == Kind::kObject &&
             is_global(v, {"numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer"})) {
    // Protocol 5: _frombuffer(buffer, dtype, shape, order).
    const PickleValue& args = v.args();
    if (args.size() != 4 || !args.at(3).is_text()) {
      v.fail(context + "expected _frombuffer(buffer, dtype, shape, order), found " + v.repr(/*max_chars=*/80));
    }
    data = &args.at(0);
    dtype = &args.at(1);
    shape = &args.at(2);
    const std::string& order = args.at(3).as_text();
    if (order != "C" && order != "F") args.at(3).fail(context + "bad array order " + args.at(3).repr());
    a.fortran_order = order == "F";
  } else {
    v.fail(context + "expected a numpy array, found " + std::string(v.kind_name()) + " " + v.repr(/*max_chars=*/80));
  }
  const Dtype d = parse_dtype(*dtype, context);
  a.dtype = d.str;
  a.kind = d.kind;
  a.itemsize = d.itemsize;
  a.shape = parse_shape(*shape, context);
  a.numel = 1;
  for (const int64_t dim : a.shape) {
    if (dim != 0 && a.numel > std::numeric_limits<int64_t>::max() / dim) shape->fail(context + "array shape overflows");
    a.numel *= dim;
  }
  if (data->kind() == Kind::kList) data->fail(context + "array data is a list (object arrays are not supported)");
  if (data->kind() != Kind::kBytes) data->fail(context + "expected the array's raw bytes, found " + data->kind_name());
  const std::string& bytes = data->as_bytes();
  if (a.numel > std::numeric_limits<int64_t>::max() / a.itemsize ||
      static_cast<uint64_t>(a.numel * a.itemsize) != bytes.size()) {
    data->fail(context + "array data has " + std::to_string(bytes.size()) + " bytes; expected " +
               std::to_string(a.numel) + " elements of " + std::to_string(a.itemsize) + " bytes for shape " +
               shape->repr(/*max_chars=*/60) + " and dtype " + single_quoted(a.dtype));
  }
  a.data = bytes;
  return a;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// ------------------------------------------------------------------ CIFAR

const PickleValue& root_dict(const PickleDocument& doc) {
  const PickleValue& root = doc.root();
  if (root.kind() != Kind::kDict) root.fail(std::string("expected a dict at the top level, found ") + root.kind_name());
  return root;
}

// A list/tuple of ints or a 1-D integer numpy array; `count` values in [0, limit).
std::vector<int64_t> read_labels(const PickleValue& v, const std::string& key, int64_t count, int64_t limit) {
  const std::string context = "key " + single_quoted(key) + ": ";
  std::vector<int64_t> labels;
  if (v.kind() == Kind::kList || v.kind() == Kind::kTuple) {
    if (static_cast<int64_t>(v.size()) != count) {
      v.fail(context + "expected " + std::to_string(count) + " labels (one per image), found " +
             std::to_string(v.size()));
    }
    labels.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      const PickleValue& e = v.at(i);
      if (e.kind() != Kind::kInt) {
        e.fail(context + "element " + std::to_string(i) + ": expected an int label, found " + e.kind_name() + " " +
               e.repr(/*max_chars=*/40));
      }
      labels.push_back(e.as_int());
    }
  } else if (v.kind() == Kind::kObject) {
    const PickleArray a = ndarray_of(v, context);
    const bool int_kind = a.kind == 'i' || a.kind == 'u';
    const bool int_size = a.itemsize == 1 || a.itemsize == 2 || a.itemsize == 4 || a.itemsize == 8;
    if (!int_kind || !int_size || a.shape.size() != 1) {
      v.fail(context + "expected a list of ints or a 1-D integer array, found an array of dtype " + single_quoted(a.dtype) +
             " and shape " + shape_string(a.shape));
    }
    if (a.numel != count) {
      v.fail(context + "expected " + std::to_string(count) + " labels (one per image), found " +
             std::to_string(a.numel));
    }
    const bool big_endian = a.dtype[0] == '>';
    labels.reserve(static_cast<size_t>(a.numel));
    for (int64_t i = 0; i < a.numel; ++i) {
      const auto* p = reinterpret_cast<const uint8_t*>(a.data.data()) + i * a.itemsize;
      uint64_t bits = 0;
      for (int64_t b = 0; b < a.itemsize; ++b) {
        const int64_t byte = big_endian ? b : a.itemsize - 1 - b;
        bits = (bits << 8) | p[byte];
      }
      int64_t value = static_cast<int64_t>(bits);
      if (a.kind == 'i' && a.itemsize < 8 && (bits >> (8 * a.itemsize - 1)) != 0) {
        value = static_cast<int64_t>(bits) - (int64_t{1} << (8 * a.itemsize));  // sign-extend
      }
      if (a.kind == 'u' && a.itemsize == 8 && bits > uint64_t{std::numeric_limits<int64_t>::max()}) value = -1;
      labels.push_back(value);
    }
  } else {
    v.fail(context + "expected a list of int labels, found " + v.kind_name() + " " + v.repr(/*max_chars=*/40));
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= limit) {
      v.fail(context + "label " + std::to_string(labels[i]) + " at index " + std::to_string(i) +
             " out of range; expected labels in [0, " + std::to_string(limit) + ")");
    }
  }
  return labels;
}

}  // namespace

PickleArray pickle_ndarray(const PickleValue& value) { return ndarray_of(value, ""); }

CifarPickleBatch read_cifar_pickle_batch(const uint8_t* data, size_t size, const std::string& what) {
  const PickleDocument doc = parse_pickle(data, size, what);
  const PickleValue& root = root_dict(doc);

  const PickleValue& data_value = root.get("data");
  const PickleArray a = ndarray_of(data_value, "key 'data': ");
  if (a.kind != 'u' || a.itemsize != 1) {
    data_value.fail("key 'data': expected dtype '|u1' (uint8), found " + single_quoted(a.dtype));
  }
  if (a.fortran_order) data_value.fail("key 'data': expected a C-order array, found Fortran order");
  const int64_t count = a.numel / kCifarImageBytes;
  const bool shape_ok =
      a.numel % kCifarImageBytes == 0 &&
      ((a.shape.size() == 1) || (a.shape.size() == 2 && a.shape[1] == kCifarImageBytes) ||
       (a.shape.size() == 4 && a.shape[1] == kCifarChannels && a.shape[2] == kCifarSide && a.shape[3] == kCifarSide));
  if (!shape_ok) {
    data_value.fail("key 'data': expected shape (N, 3072), (N, 3, 32, 32) or (N*3072,), found " +
                    shape_string(a.shape));
  }

  CifarPickleBatch batch;
  batch.count = count;
  batch.images.assign(a.data.begin(), a.data.end());
  if (const PickleValue* fine = root.find("fine_labels")) {
    batch.labels = read_labels(*fine, "fine_labels", count, kCifarFineClasses);
    batch.coarse_labels = read_labels(root.get("coarse_labels"), "coarse_labels", count, kCifarCoarseClasses);
  } else if (const PickleValue* labels = root.find("labels")) {
    batch.labels = read_labels(*labels, "labels", count, kCifarFineClasses);
  } else {
    root.fail("missing key 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100) (keys: " + dict_keys(root) + ")");
  }
  return batch;
}

std::vector<std::string> read_cifar_pickle_names(const uint8_t* data, size_t size, const std::string& key,
                                                 const std::string& what) {
  const PickleDocument doc = parse_pickle(data, size, what);
  const PickleValue& list = root_dict(doc).get(key);
  if (list.kind() != Kind::kList && list.kind() != Kind::kTuple) {
    list.fail("key " + single_quoted(key) + ": expected a list of names, found " + list.kind_name());
  }
  std::vector<std::string> names;
  names.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const PickleValue& e = list.at(i);
    if (!e.is_text()) {
      e.fail("key " + single_quoted(key) + ": element " + std::to_string(i) + ": expected bytes or str, found " +
             e.kind_name());
    }
    names.push_back(e.as_text());
  }
  return names;
}

}  // namespace liondg
