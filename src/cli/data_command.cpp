// `liondg data info|fetch`: inspect a data source; download an official release.

#include "cli/commands.h"

#include <liondg/data/batcher.h>
#include <liondg/data/dataset.h>
#include <liondg/data/fetch.h>
#include <liondg/errors.h>
#include <liondg/util/fs.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <iostream>

namespace liondg::cli {
namespace {

using json = nlohmann::json;

json split_json(const Dataset& d, int64_t num_classes) {
  json j{{"count", d.size()}, {"per_class", class_counts(d, num_classes)}};
  if (d.size() > 0) {
    const ChannelStats s = channel_stats(d.images);
    j["mean"] = s.mean;
    j["std"] = s.std;
  } else {
    j["mean"] = json::array();
    j["std"] = json::array();
  }
  return j;
}

std::string joined(const std::vector<double>& v) {
  std::string out;
  char buf[32];
  for (double x : v) {
    std::snprintf(buf, sizeof buf, "%.4f", x);
    out += (out.empty() ? "" : ", ") + std::string(buf);
  }
  return "[" + out + "]";
}

struct InfoArgs {
  std::string source;
  std::string dataset = "auto";
  std::string resize;
  bool json = false;
  bool no_cache = false;
};

int run_info(const InfoArgs& a) {
  // A known data-set name means its default location; anything else is a path.
  const auto& names = dataset_names();
  const bool is_name = std::find(names.begin(), names.end(), a.source) != names.end() && !is_directory(a.source) &&
                       !is_regular_file(a.source);
  LoadOptions o;
  o.use_cache = !a.no_cache;
  if (!a.resize.empty()) o.resize = parse_image_size(a.resize, "--resize");
  if (!a.json) o.progress = stderr;
  const auto start = std::chrono::steady_clock::now();
  const DataSource src = is_name ? load_dataset(a.source, "", o) : load_dataset(a.dataset, a.source, o);
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  json j;
  j["name"] = src.name;
  j["format"] = src.format;
  j["path"] = src.path;
  j["root"] = src.root;
  j["classes"] = src.class_names;
  if (!src.coarse_class_names.empty()) j["coarse_classes"] = src.coarse_class_names;
  j["shape"] = {src.channels(), src.height(), src.width()};
  j["splits"]["train"] = split_json(src.train, src.num_classes());
  j["splits"]["test"] = split_json(src.test, src.num_classes());
  j["cache"] = src.cache_path.empty() ? json(nullptr) : json(src.cache_path);
  j["from_cache"] = src.from_cache;
  j["load_seconds"] = load_seconds;
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << "data set: " << src.name << "\n"
            << "source: " << src.path << (src.root.empty() ? "" : " (inside: " + src.root + ")") << "\n"
            << "format: " << src.format << "\n"
            << "image shape: " << src.channels() << "x" << src.height() << "x" << src.width() << " (C x H x W)\n"
            << "classes (" << src.num_classes() << "):";
  for (size_t k = 0; k < src.class_names.size(); ++k) std::cout << (k ? ", " : " ") << src.class_names[k];
  std::cout << "\n";
  if (!src.coarse_class_names.empty()) std::cout << "coarse classes: " << src.coarse_class_names.size() << "\n";
  for (const char* split : {"train", "test"}) {
    const json& s = j["splits"][split];
    const auto per_class = s["per_class"].get<std::vector<int64_t>>();
    const auto [lo, hi] = std::minmax_element(per_class.begin(), per_class.end());
    std::cout << split << ": " << s["count"].get<int64_t>() << " images, per class "
              << (per_class.empty() ? 0 : *lo) << ".." << (per_class.empty() ? 0 : *hi)
              << ", mean " << joined(s["mean"].get<std::vector<double>>()) << ", std "
              << joined(s["std"].get<std::vector<double>>()) << "\n";
  }
  std::cout << "cache: " << (src.cache_path.empty() ? "none" : src.cache_path + (src.from_cache ? " (hit)" : " (written)"))
            << "\n"
            << "load time: " << load_seconds << " s\n";
  return kExitOk;
}

struct FetchArgs {
  std::string dataset;
  std::string to;
  std::string format = "binary";
  std::string mirror;
  long connect_timeout_s = 15;
  bool quiet = false;
};

int run_fetch(const FetchArgs& a) {
  const std::string dir = a.to.empty() ? join_path(default_download_dir(), a.dataset) : a.to;
  FetchOptions o;
  o.mirror = a.mirror;
  if (o.mirror.empty()) {
    if (const char* m = std::getenv("LIONDG_MIRROR"); m != nullptr) o.mirror = m;
  }
  o.connect_timeout_s = a.connect_timeout_s;
  o.progress = !a.quiet;
  std::string last;
  for (const auto& f : official_files(a.dataset, a.format)) {
    FetchStats stats;
    o.stats = &stats;
    last = fetch_file(f, dir, o);
    std::cout << (stats.reused ? "present " : "fetched ") << last << " (" << f.algorithm << " " << f.digest
              << " verified)\n";
  }
  const bool archive = last.find(".tar") != std::string::npos;
  std::cout << "use it with: liondg train --dataset " << a.dataset << " --data " << (archive ? last : dir)
            << (a.to.empty() ? "   (or without --data: this is the default location)" : "") << "\n";
  return kExitOk;
}

}  // namespace

void add_data_commands(CLI::App& app, int& status) {
  auto* data = app.add_subcommand("data", "Inspect data sources and fetch official releases");
  data->require_subcommand(1);

  auto info = std::make_shared<InfoArgs>();
  auto* i = data->add_subcommand("info", "Format, classes, counts, shape and per-channel statistics of a data source");
  i->add_option("source", info->source,
                "A data set name (its default location) or a path: directory or archive in any supported layout")
      ->required();
  i->add_option("--dataset", info->dataset, "Expect this data set (default: detect from the layout)")
      ->check(CLI::IsMember([] {
        std::vector<std::string> v{"auto"};
        for (const auto& n : dataset_names())
          if (n != "synthetic") v.push_back(n);
        return v;
      }()))
      ->capture_default_str();
  i->add_option("--resize", info->resize, "Resize image-folder images to HxW");
  i->add_flag("--json", info->json, "Print JSON");
  i->add_flag("--no-cache", info->no_cache, "Do not read or write the decoded-data cache");
  i->callback([info, &status] { status = run_info(*info); });

  auto fetch = std::make_shared<FetchArgs>();
  auto* f = data->add_subcommand(
      "fetch", "Download a data set's official files (HTTPS, resumable) and verify their published checksums");
  f->add_option("dataset", fetch->dataset, "Data set")->required()->check(CLI::IsMember(fetchable_datasets()));
  f->add_option("--to", fetch->to, "Directory for the files (default: $LIONDG_DATA_DIR, else ~/.local/share/liondg, "
                                   "then /<dataset>)");
  f->add_option("--format", fetch->format, "CIFAR release: binary or python")
      ->check(CLI::IsMember({"binary", "python", "idx"}))
      ->capture_default_str();
  f->add_option("--mirror", fetch->mirror,
                "Download from this URL prefix instead of the official site (also $LIONDG_MIRROR), e.g. file:///srv/data/");
  f->add_option("--connect-timeout", fetch->connect_timeout_s, "Seconds to wait for a connection")
      ->check(CLI::Range(1L, 600L))
      ->capture_default_str();
  f->add_flag("--quiet", fetch->quiet, "No progress bar");
  f->callback([fetch, &status] { status = run_fetch(*fetch); });
}

}  // namespace liondg::cli
