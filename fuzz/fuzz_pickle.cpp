// Fuzzes the pickle reader of the CIFAR "python version" files: liondg::parse_pickle
// (then every value's accessors, repr and pickle_ndarray), liondg::read_cifar_pickle_batch
// and liondg::read_cifar_pickle_names. Exceptions are the reader's way of rejecting
// input; anything else is a bug.

#include <liondg/data/pickle.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>
#include <unordered_set>
#include <vector>

namespace {

constexpr char kWhat[] = "fuzz.pickle";
constexpr char kNamesKey[] = "label_names";
constexpr size_t kMaxVisited = 4096;  // values examined per input (documents may be cyclic)
constexpr size_t kReprChars = 200;
constexpr int64_t kCifarImageBytes = 3 * 32 * 32;

// Calls what applies to `v`; accessors that throw are part of the contract.
void examine(const liondg::PickleValue& v) {
  using Kind = liondg::PickleValue::Kind;
  const std::string r = v.repr(kReprChars);
  if (r.size() > kReprChars + 3) std::abort();  // repr promises a cut at about max_chars
  try {
    switch (v.kind()) {
      case Kind::kBool: v.as_bool(); v.as_int(); break;
      case Kind::kInt: v.as_int(); v.as_float(); break;
      case Kind::kFloat: v.as_float(); break;
      case Kind::kBytes: v.as_bytes(); v.as_text(); break;
      case Kind::kStr: v.as_str(); v.as_text(); break;
      case Kind::kDict: v.find("data"); v.get("labels"); break;
      case Kind::kGlobal: v.global_name(); break;
      case Kind::kObject: {
        v.global_name();
        v.args();
        v.state();
        const liondg::PickleArray a = liondg::pickle_ndarray(v);
        if (a.numel < 0 || a.itemsize <= 0 || a.data.size() != static_cast<size_t>(a.numel * a.itemsize)) {
          std::abort();
        }
        break;
      }
      default: break;
    }
  } catch (const std::exception&) {
  }
}

// Visits the values reachable from the root (each once, at most kMaxVisited).
void walk(const liondg::PickleDocument& doc) {
  using Kind = liondg::PickleValue::Kind;
  std::unordered_set<const liondg::PickleValue*> seen;
  std::vector<const liondg::PickleValue*> todo{&doc.root()};
  while (!todo.empty() && seen.size() < kMaxVisited) {
    const liondg::PickleValue* v = todo.back();
    todo.pop_back();
    if (!seen.insert(v).second) continue;
    examine(*v);
    if (v->kind() == Kind::kTuple || v->kind() == Kind::kList) {
      for (size_t i = 0; i < v->size(); ++i) todo.push_back(&v->at(i));
    } else if (v->kind() == Kind::kDict) {
      for (size_t i = 0; i < v->size(); ++i) {
        todo.push_back(&v->key_at(i));
        todo.push_back(&v->value_at(i));
      }
    } else if (v->kind() == Kind::kObject) {
      todo.push_back(&v->args());
      if (const liondg::PickleValue* state = v->state()) todo.push_back(state);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const liondg::PickleDocument doc = liondg::parse_pickle(data, size, kWhat);
    if (doc.what() != kWhat || doc.value_count() > liondg::kPickleMaxValues) std::abort();
    walk(doc);
  } catch (const std::exception&) {
    return 0;  // not a pickle: the CIFAR readers would reject it the same way
  }
  try {
    const liondg::CifarPickleBatch batch = liondg::read_cifar_pickle_batch(data, size, kWhat);
    if (batch.images.size() != static_cast<size_t>(batch.count * kCifarImageBytes) ||
        batch.labels.size() != static_cast<size_t>(batch.count) ||
        (!batch.coarse_labels.empty() && batch.coarse_labels.size() != static_cast<size_t>(batch.count))) {
      std::abort();
    }
  } catch (const std::exception&) {
  }
  try {
    liondg::read_cifar_pickle_names(data, size, kNamesKey, kWhat);
  } catch (const std::exception&) {
  }
  return 0;
}
