// Fuzzes the archive reader: liondg::SourceTree::open (libarchive: tar, gnutar,
// zip, with every compression filter) and SourceTree::is_archive_file on the input
// as a file, then every member of the tree; and liondg::safe_member_path on the
// input as a member name. Exceptions are the reader's way of rejecting input;
// anything else is a bug.

#include <liondg/data/archive.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>

#include "fuzz_input_file.h"

namespace {

constexpr char kArchiveName[] = "fuzz.tar";

// What safe_member_path promises for a path it returns.
void check_member_path(const std::string& out) {
  if (!out.empty() && (out.front() == '/' || out.back() == '/')) std::abort();
  if (out.find("//") != std::string::npos) std::abort();
  size_t start = 0;
  while (start <= out.size()) {
    size_t end = out.find('/', start);
    if (end == std::string::npos) end = out.size();
    const std::string part = out.substr(start, end - start);
    if (part == ".." || (part == "." && !out.empty())) std::abort();
    start = end + 1;
  }
  if (liondg::safe_member_path(out, kArchiveName) != out) std::abort();  // idempotent
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static liondg_fuzz::InputFile file;
  try {
    check_member_path(liondg::safe_member_path(std::string(reinterpret_cast<const char*>(data), size), kArchiveName));
  } catch (const std::exception&) {
  }
  const std::string& path = file.write(data, size);
  liondg::SourceTree::is_archive_file(path);
  try {
    const liondg::SourceTree tree = liondg::SourceTree::open(path);
    if (!tree.is_archive()) std::abort();
    for (const std::string& name : tree.files()) {
      check_member_path(name);
      if (!tree.contains(name)) std::abort();
      if (static_cast<int64_t>(tree.read(name).size()) != tree.file_size(name)) std::abort();
      tree.describe(name);
    }
    for (const std::string& dir : tree.directories()) check_member_path(dir);
  } catch (const std::exception&) {
  }
  return 0;
}
