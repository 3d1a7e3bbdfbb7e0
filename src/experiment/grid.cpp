// Experiment grids: specification, expansion, sharding, resumable results, workers.

#include <liondg/errors.h>
#include <liondg/experiment/grid.h>
#include <liondg/init/plan.h>
#include <liondg/models/registry.h>
#include <liondg/data/batcher.h>
#include <liondg/train/trainer.h>
#include <liondg/util/fs.h>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

extern char** environ;

namespace liondg {
namespace {

using Json = nlohmann::json;

const std::set<std::string> kTopLevelKeys{"name", "datasets", "models", "inits", "seeds",
                                          "data", "train", "model", "synthetic", "sweep"};

[[noreturn]] void bad(const std::string& origin, const std::string& what) {
  throw UsageError("grid " + origin + ": " + what);
}

std::vector<std::string> string_list(const Json& j, const std::string& key, const std::string& origin) {
  if (!j.contains(key)) bad(origin, "missing '" + key + "' (a non-empty list)");
  const Json& v = j.at(key);
  if (!v.is_array() || v.empty()) bad(origin, "'" + key + "' must be a non-empty list");
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string()) bad(origin, "'" + key + "' must hold strings, got " + e.dump());
    out.push_back(e.get<std::string>());
  }
  return out;
}

double number(const Json& v, const std::string& where, const std::string& origin) {
  if (!v.is_number()) bad(origin, where + " must be a number, got " + v.dump());
  return v.get<double>();
}

int64_t integer(const Json& v, const std::string& where, const std::string& origin) {
  if (!v.is_number_integer()) bad(origin, where + " must be an integer, got " + v.dump());
  return v.get<int64_t>();
}

bool boolean(const Json& v, const std::string& where, const std::string& origin) {
  if (!v.is_boolean()) bad(origin, where + " must be true or false, got " + v.dump());
  return v.get<bool>();
}

std::vector<int64_t> int_list(const Json& v, const std::string& where, const std::string& origin) {
  if (!v.is_array() || v.empty()) bad(origin, where + " must be a non-empty list of integers");
  std::vector<int64_t> out;
  for (const auto& e : v) out.push_back(integer(e, where, origin));
  return out;
}

// The one switch from a grid option name to the run configuration.
void apply_option(RunConfig& c, const std::string& section, const std::string& key, const Json& v,
                  const std::string& origin) {
  const std::string where = section + "." + key;
  TrainOptions& t = c.train;
  if (section == "train") {
    if (key == "steps") t.steps(integer(v, where, origin));
    else if (key == "batch_size") t.batch_size(integer(v, where, origin));
    else if (key == "lr") t.lr(number(v, where, origin));
    else if (key == "beta1") t.beta1(number(v, where, origin));
    else if (key == "beta2") t.beta2(number(v, where, origin));
    else if (key == "weight_decay") t.weight_decay(number(v, where, origin));
    else if (key == "aux_weight") t.aux_weight(number(v, where, origin));
    else if (key == "aux_warmup_steps") t.aux_warmup_steps(integer(v, where, origin));
    else if (key == "target_acc") t.target_acc(number(v, where, origin));
    else if (key == "target_window") t.target_window(integer(v, where, origin));
    else if (key == "grad_every") t.grad_every(integer(v, where, origin));
    else if (key == "eval_every") t.eval_every(integer(v, where, origin));
    else if (key == "eval_batch_size") t.eval_batch_size(integer(v, where, origin));
    else if (key == "eval_limit") t.eval_limit(integer(v, where, origin));
    else if (key == "hflip") t.hflip(boolean(v, where, origin));
    else if (key == "bf16") t.bf16(boolean(v, where, origin));
    else if (key == "no_decay_scalars") t.no_decay_scalars(boolean(v, where, origin));
    else if (key == "no_decay_zero_init") t.no_decay_zero_init(boolean(v, where, origin));
    else if (key == "scalar_lr_mult") t.scalar_lr_mult(number(v, where, origin));
    else if (key == "lsuv_samples") c.lsuv.samples(integer(v, where, origin));
    else if (key == "lsuv_tolerance") c.lsuv.tolerance(number(v, where, origin));
    else if (key == "lsuv_max_iter") c.lsuv.max_iterations(integer(v, where, origin));
    else if (key == "gradinit_iters") c.gradinit.iterations(integer(v, where, origin));
    else if (key == "gradinit_batch_size") c.gradinit.batch_size(integer(v, where, origin));
    else if (key == "gradinit_lr") c.gradinit.lr(number(v, where, origin));
    else if (key == "gradinit_eta") c.gradinit.eta(number(v, where, origin));
    else if (key == "gradinit_gamma") c.gradinit.gamma(number(v, where, origin));
    else if (key == "gradinit_min_scale") c.gradinit.min_scale(number(v, where, origin));
    else if (key == "aux_init") c.aux_init = v.is_string() ? v.get<std::string>() : (bad(origin, where + " must be a string"), "");
    else bad(origin, "unknown option '" + where + "'");
  } else if (section == "model") {
    if (key == "growth_rate") c.model.growth_rate = integer(v, where, origin);
    else if (key == "block_layers") c.model.block_layers = int_list(v, where, origin);
    else if (key == "compression") c.model.compression = number(v, where, origin);
    else if (key == "widths") c.model.widths = int_list(v, where, origin);
    else if (key == "blocks_per_stage") c.model.blocks_per_stage = int_list(v, where, origin);
    else if (key == "aux_after") c.model.aux_after = int_list(v, where, origin);
    else if (key == "aux_hidden") c.model.aux_hidden = integer(v, where, origin);
    else if (key == "batch_norm") c.model.batch_norm = boolean(v, where, origin);
    else bad(origin, "unknown option '" + where + "'");
  } else if (section == "synthetic") {
    if (key == "train_size") c.synthetic.train_size = integer(v, where, origin);
    else if (key == "test_size") c.synthetic.test_size = integer(v, where, origin);
    else if (key == "image_size") c.synthetic.height = c.synthetic.width = integer(v, where, origin);
    else if (key == "channels") c.synthetic.channels = integer(v, where, origin);
    else if (key == "classes") c.synthetic.num_classes = integer(v, where, origin);
    else if (key == "noise") c.synthetic.noise = number(v, where, origin);
    else bad(origin, "unknown option '" + where + "'");
  } else {
    bad(origin, "unknown section '" + section + "'");
  }
}

std::string format_value(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

Json toml_to_json(const toml::node& node) {
  if (auto* t = node.as_table()) {
    Json j = Json::object();
    for (const auto& [k, v] : *t) j[std::string(k.str())] = toml_to_json(v);
    return j;
  }
  if (auto* a = node.as_array()) {
    Json j = Json::array();
    for (const auto& v : *a) j.push_back(toml_to_json(v));
    return j;
  }
  if (auto* s = node.as_string()) return s->get();
  if (auto* i = node.as_integer()) return i->get();
  if (auto* f = node.as_floating_point()) return f->get();
  if (auto* b = node.as_boolean()) return b->get();
  throw UsageError("unsupported TOML value (dates and times are not grid options)");
}

std::string preset_json(const std::string& name) {
  if (name == "paper") {
    return R"({"name": "paper",
      "datasets": ["cifar10", "cifar100"], "models": ["densenet-ds", "resnet-ds"],
      "inits": ["he", "lion-dg", "lsuv", "lion-lsuv", "fixup", "rezero", "gradinit"],
      "seeds": [42, 123, 456],
      "train": {"steps": 3000, "batch_size": 128, "target_acc": 0.70, "eval_every": 500}})";
  }
  if (name == "quick") {
    // The paper's comparison on Fashion-MNIST sized for under 5 minutes on 2 CPU cores:
    // a narrower DenseNet-DS (growth 6, 3 x 3 layers), batch 64, 200 steps, 2000
    // validation images, and a target (60% over 20 batches) the budget reaches.
    return R"({"name": "quick",
      "datasets": ["fashion-mnist"], "models": ["densenet-ds"],
      "inits": ["he", "lion-dg", "lsuv", "lion-lsuv"], "seeds": [42, 123],
      "model": {"growth_rate": 6, "block_layers": [3, 3, 3]},
      "train": {"steps": 200, "batch_size": 64, "target_acc": 0.60, "target_window": 20,
                "eval_every": 100, "eval_limit": 2000, "lsuv_samples": 128}})";
  }
  if (name == "smoke") {
    return R"({"name": "smoke",
      "datasets": ["synthetic"], "models": ["densenet-ds"],
      "inits": ["he", "lion-dg"], "seeds": [1, 2],
      "model": {"growth_rate": 4, "block_layers": [1, 1, 1]},
      "synthetic": {"train_size": 128, "test_size": 64, "image_size": 12, "classes": 4},
      "train": {"steps": 12, "batch_size": 16, "target_acc": 0.5, "target_window": 4,
                "grad_every": 2, "eval_every": 6}})";
  }
  std::string known;
  for (const auto& n : grid_preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw UsageError("unknown grid preset '" + name + "'; expected one of: " + known);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot read '" + path + "'");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

// ------------------------------------------------------------------ specification

const std::vector<std::string>& grid_preset_names() {
  static const std::vector<std::string> kNames{"paper", "quick", "smoke"};
  return kNames;
}

GridSpec grid_preset(const std::string& name) { return grid_from_json(preset_json(name), "preset '" + name + "'"); }

GridSpec grid_from_json(const std::string& text, const std::string& origin) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::parse_error& e) {
    bad(origin, std::string("invalid JSON: ") + e.what());
  }
  if (!j.is_object()) bad(origin, "must be an object");
  for (const auto& [k, v] : j.items()) {
    if (!kTopLevelKeys.count(k)) bad(origin, "unknown key '" + k + "'");
  }
  GridSpec spec;
  spec.name = j.value("name", std::string("custom"));
  spec.datasets = string_list(j, "datasets", origin);
  spec.models = string_list(j, "models", origin);
  spec.inits = string_list(j, "inits", origin);
  if (!j.contains("seeds") || !j["seeds"].is_array() || j["seeds"].empty()) bad(origin, "missing 'seeds' (a non-empty list)");
  for (const auto& s : j["seeds"]) {
    if (!s.is_number_unsigned() && !(s.is_number_integer() && s.get<int64_t>() >= 0)) {
      bad(origin, "seeds must be non-negative integers, got " + s.dump());
    }
    spec.seeds.push_back(s.get<uint64_t>());
  }
  for (const auto& d : spec.datasets) {
    if (std::find(dataset_names().begin(), dataset_names().end(), d) == dataset_names().end()) {
      bad(origin, "unknown dataset '" + d + "'");
    }
  }
  for (const auto& m : spec.models) {
    if (std::find(model_names().begin(), model_names().end(), m) == model_names().end()) bad(origin, "unknown model '" + m + "'");
  }
  for (const auto& i : spec.inits) {
    if (std::find(init_preset_names().begin(), init_preset_names().end(), i) == init_preset_names().end()) {
      bad(origin, "unknown init preset '" + i + "'");
    }
  }
  for (const std::string section : {"data", "train", "model", "synthetic", "sweep"}) {
    if (j.contains(section) && !j[section].is_object()) bad(origin, "'" + section + "' must be a table");
  }
  // Validate every option once by applying it to a scratch configuration.
  RunConfig scratch;
  for (const std::string section : {"train", "model", "synthetic"}) {
    if (!j.contains(section)) continue;
    for (const auto& [k, v] : j[section].items()) apply_option(scratch, section, k, v, origin);
  }
  if (scratch.train.bf16()) {
    // Where a cell would refuse bf16, refuse the grid up front, by the models' own rule
    // (bf16_refusal, which set_bf16_training enforces), without building them.
    for (const auto& m : spec.models) {
      for (const auto& i : spec.inits) {
        ModelSpec model = scratch.model;
        model.name = m;
        model.block = init_plan_from_preset(i).required_block();
        std::string refusal;
        try {
          refusal = bf16_refusal(model);
        } catch (const c10::Error& e) {
          bad(origin, "model '" + m + "' with init '" + i + "': " + e.what_without_backtrace());
        }
        if (!refusal.empty()) bad(origin, "train.bf16 with model '" + m + "' and init '" + i + "': " + refusal);
      }
    }
  }
  if (j.contains("sweep")) {
    for (const auto& [k, v] : j["sweep"].items()) {
      if (!v.is_array() || v.empty()) bad(origin, "sweep." + k + " must be a non-empty list");
      for (const auto& e : v) {
        if (!e.is_number()) bad(origin, "sweep." + k + " values must be numbers, got " + e.dump());
        apply_option(scratch, "train", k, e, origin);
      }
    }
  }
  if (j.contains("data")) {
    for (const auto& [k, v] : j["data"].items()) {
      if (!v.is_string()) bad(origin, "data." + k + " must be a path string");
    }
  }
  spec.json = j.dump(2);
  return spec;
}

namespace {
// toml++ 3.3.0 reaches __builtin_unreachable on some non-ASCII bytes outside strings
// (upstream issue marzer/tomlplusplus#295, fixed after the version Debian ships). A grid
// config's keys and bare values are ASCII, so other bytes are refused there up front;
// strings (paths) and comments may hold any UTF-8.
void check_ascii_outside_strings(const std::string& text, const std::string& path) {
  int64_t line = 1;
  char quote = 0;
  bool comment = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      comment = false;
      continue;
    }
    if (comment) continue;
    if (quote != 0) {
      if (c == '\\' && quote == '"') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
      continue;
    }
    if (c == '#') {
      comment = true;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (static_cast<unsigned char>(c) >= 0x80) {
      throw UsageError("grid config '" + path + "' line " + std::to_string(line) +
                       ": non-ASCII character outside a string or comment");
    }
  }
}
}  // namespace

GridSpec grid_from_toml_file(const std::string& path) {
  if (!is_regular_file(path)) throw DataError("grid config '" + path + "' does not exist");
  const std::string text = read_text(path);
  check_ascii_outside_strings(text, path);
  toml::table table;
  try {
    table = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    std::ostringstream msg;
    msg << "grid config '" << path << "' line " << e.source().begin.line << ", column " << e.source().begin.column
        << ": " << e.description();
    throw UsageError(msg.str());
  }
  return grid_from_json(toml_to_json(table).dump(), "config '" + path + "'");
}

void set_grid_data_path(GridSpec& spec, const std::string& dataset, const std::string& path) {
  Json j = Json::parse(spec.json);
  j["data"][dataset] = path;
  spec = grid_from_json(j.dump(), "--data");
}

// ------------------------------------------------------------------ cells

std::vector<GridCell> expand_grid(const GridSpec& spec) {
  const Json j = Json::parse(spec.json);
  RunConfig base;
  for (const std::string section : {"train", "model", "synthetic"}) {
    if (!j.contains(section)) continue;
    for (const auto& [k, v] : j[section].items()) apply_option(base, section, k, v, spec.name);
  }
  // Sweep combinations in key order.
  std::vector<std::map<std::string, double>> combos{{}};
  if (j.contains("sweep")) {
    for (const auto& [k, values] : j["sweep"].items()) {
      std::vector<std::map<std::string, double>> next;
      for (const auto& combo : combos) {
        for (const auto& v : values) {
          auto c = combo;
          c[k] = v.get<double>();
          next.push_back(c);
        }
      }
      combos = next;
    }
  }
  std::vector<GridCell> cells;
  for (const auto& dataset : spec.datasets) {
    for (const auto& model : spec.models) {
      for (const auto& init : spec.inits) {
        for (const auto& combo : combos) {
          for (uint64_t seed : spec.seeds) {
            GridCell cell;
            cell.dataset = dataset;
            cell.model = model;
            cell.init = init;
            cell.seed = seed;
            cell.sweep = combo;
            cell.key = dataset + "__" + model + "__" + init + "__s" + std::to_string(seed);
            cell.config = base;
            for (const auto& [k, v] : combo) {
              cell.key += "__" + k + "=" + format_value(v);
              const Json value = Json(v);
              apply_option(cell.config, "train", k,
                           std::floor(v) == v && std::abs(v) < 1e15 ? Json(static_cast<int64_t>(v)) : value, spec.name);
            }
            cell.config.dataset = dataset;
            cell.config.model.name = model;
            cell.config.init = init;
            cell.config.seed = seed;
            if (j.contains("data") && j["data"].contains(dataset)) cell.config.data_path = j["data"][dataset];
            cell.config.out_dir = "runs/" + cell.key;
            cells.push_back(std::move(cell));
          }
        }
      }
    }
  }
  return cells;
}

std::vector<GridCell> shard_cells(const std::vector<GridCell>& cells, int64_t index, int64_t count) {
  TORCH_CHECK_VALUE(count >= 1 && index >= 0 && index < count, "shard index ", index, " out of range for ", count,
                    " shards");
  std::vector<GridCell> out;
  for (size_t i = static_cast<size_t>(index); i < cells.size(); i += static_cast<size_t>(count)) out.push_back(cells[i]);
  return out;
}

std::pair<int64_t, int64_t> parse_shard(const std::string& text) {
  const size_t slash = text.find('/');
  try {
    if (slash != std::string::npos) {
      size_t used_i = 0, used_n = 0;
      const long long i = std::stoll(text.substr(0, slash), &used_i);
      const long long n = std::stoll(text.substr(slash + 1), &used_n);
      if (used_i == slash && used_n == text.size() - slash - 1 && n >= 1 && i >= 1 && i <= n) return {i - 1, n};
    }
  } catch (const std::exception&) {
  }
  throw UsageError("--shard expects I/N with 1 <= I <= N (e.g. 2/8), got '" + text + "'");
}

// ------------------------------------------------------------------ results

std::vector<CellResult> read_results(const std::string& path) {
  std::vector<CellResult> out;
  std::ifstream in(path);
  if (!in) return out;
  std::map<std::string, size_t> index;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    Json j;
    try {
      j = Json::parse(line);
    } catch (const Json::parse_error&) {
      continue;  // a torn line from a kill while appending: that cell is not finished
    }
    if (!j.is_object() || !j.contains("key") || !j.contains("status")) continue;
    CellResult r{j["key"].get<std::string>(), j["status"].get<std::string>(), line};
    auto it = index.find(r.key);
    if (it == index.end()) {
      index[r.key] = out.size();
      out.push_back(r);
    } else {
      out[it->second] = r;
    }
  }
  return out;
}

void append_result(const std::string& path, const std::string& json_line) {
  std::string line = json_line;
  line.erase(std::remove(line.begin(), line.end(), '\n'), line.end());
  // A previous writer killed mid-line leaves no trailing newline: start on a fresh line.
  {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (in && in.tellg() > 0) {
      in.seekg(-1, std::ios::end);
      char last = 0;
      in.get(last);
      if (last != '\n') line = "\n" + line;
    }
  }
  line += '\n';
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw DataError("cannot append to '" + path + "': " + std::strerror(errno));
  const ssize_t n = ::write(fd, line.data(), line.size());
  const bool ok = n == static_cast<ssize_t>(line.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) throw DataError("cannot append to '" + path + "' (disk full?)");
}

// ------------------------------------------------------------------ running

// Cells write a checkpoint this often (a few MB; metrics are unaffected), so a killed
// grid loses at most this many steps of each running cell.
constexpr int64_t kCellCheckpointEvery = 250;

CellResult run_grid_cell(const std::string& grid_dir, const std::string& key, int threads, const std::string& device) {
  const GridSpec spec = grid_from_json(read_text(join_path(grid_dir, "grid.json")), "'" + grid_dir + "/grid.json'");
  const std::vector<GridCell> cells = expand_grid(spec);
  auto it = std::find_if(cells.begin(), cells.end(), [&](const GridCell& c) { return c.key == key; });
  if (it == cells.end()) throw UsageError("grid '" + grid_dir + "' has no cell '" + key + "'");
  RunConfig c = it->config;
  c.out_dir = join_path(grid_dir, c.out_dir);
  c.overwrite = true;  // an unfinished cell's directory is redone
  c.threads = threads;
  c.train.device(device);
  Json line{{"key", key}, {"dataset", it->dataset}, {"model", it->model}, {"init", it->init},
            {"seed", it->seed}, {"sweep", it->sweep}, {"run_dir", it->config.out_dir}};
  // A cell whose run finished but whose result line was lost (the grid was killed
  // between the two) is recorded from its summary, not run again; an interrupted or
  // killed cell with a checkpoint continues from it.
  const std::string summary_path = join_path(c.out_dir, "summary.json");
  Json previous;
  if (is_regular_file(summary_path)) previous = Json::parse(read_text(summary_path), nullptr, /*allow_exceptions=*/false);
  const std::string previous_status =
      previous.is_object() && previous.contains("status") && previous["status"].is_string() ? previous["status"].get<std::string>() : "";
  if (previous_status == "completed" || previous_status == "diverged") {
    line["status"] = previous_status;
    line["summary"] = previous;
    append_result(join_path(grid_dir, "results.jsonl"), line.dump());
    return {key, line["status"], line.dump()};
  }
  c.resume = is_regular_file(join_path(c.out_dir, "checkpoint.pt"));
  c.checkpoint_every = kCellCheckpointEvery;
  try {
    const RunResult r = run_experiment(c);
    line["status"] = r.summary.status;
    line["summary"] = Json::parse(read_text(join_path(c.out_dir, "summary.json")));
  } catch (const std::exception& e) {
    line["status"] = "failed";
    line["error"] = e.what();
    append_result(join_path(grid_dir, "results.jsonl"), line.dump());
    throw;
  }
  append_result(join_path(grid_dir, "results.jsonl"), line.dump());
  return {key, line["status"], line.dump()};
}

namespace {

// Image shape and class count of a cell's data set (without loading it).
SyntheticOptions data_shape(const GridCell& cell, int64_t* test_images) {
  SyntheticOptions shape;
  *test_images = 10000;
  if (cell.dataset == "fashion-mnist" || cell.dataset == "mnist") shape.channels = 1, shape.height = shape.width = 28;
  if (cell.dataset == "cifar100") shape.num_classes = 100;
  if (cell.dataset == "synthetic") shape = cell.config.synthetic, *test_images = shape.test_size;
  return shape;
}

// Cells that share this key share a timing probe.
std::string probe_key(const GridCell& cell) {
  int64_t test = 0;
  const SyntheticOptions s = data_shape(cell, &test);
  return std::to_string(s.channels) + "x" + std::to_string(s.height) + "x" + std::to_string(s.width) + "/" + cell.model +
         "/" + to_string(init_plan_from_preset(cell.init).required_block()) + "/b" +
         std::to_string(cell.config.train.batch_size());
}

}  // namespace

StepProbe probe_cell_step(const GridCell& cell, int threads) {
  set_threads(threads);
  // Synthetic data of the data set's shape; a few real training steps (optimizer,
  // diagnostics and all) and one evaluation pass are timed. Data loading is not included.
  int64_t test_images = 0;
  SyntheticOptions shape = data_shape(cell, &test_images);
  const TrainOptions& o = cell.config.train;
  constexpr int64_t kProbeSteps = 2;
  shape.train_size = std::max<int64_t>(o.batch_size() * (kProbeSteps + 1), shape.num_classes);
  shape.test_size = std::max<int64_t>(128, shape.num_classes);
  const DataSource data = make_synthetic(shape);
  ModelSpec spec = cell.config.model;
  spec.num_classes = shape.num_classes;
  spec.in_channels = shape.channels;
  spec.block = init_plan_from_preset(cell.init).required_block();
  auto model = make_model(spec);
  TrainOptions probe = o;
  probe.eval_every(0).final_eval(false).grad_every(0);
  train(*model, data, probe.steps(1));  // warm-up
  const TrainSummary s = train(*model, data, probe.steps(kProbeSteps));
  StepProbe p;
  p.step_seconds = s.train_seconds / kProbeSteps;
  const auto t0 = std::chrono::steady_clock::now();
  evaluate(*model, data.test, channel_stats(data.test.images), o.eval_batch_size());
  p.image_eval_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / static_cast<double>(data.test.size());
  return p;
}

double estimate_cell_seconds(const GridCell& cell, const StepProbe& p) {
  int64_t test_images = 0;
  data_shape(cell, &test_images);
  const TrainOptions& o = cell.config.train;
  // A diagnostic step adds two backward passes (about 1.3 steps) every grad_every steps.
  const double per_step = p.step_seconds * (o.grad_every() > 0 ? 1.0 + 1.3 / static_cast<double>(o.grad_every()) : 1.0);
  const int64_t eval_images = o.eval_limit() > 0 ? std::min(o.eval_limit(), test_images) : test_images;
  const int64_t evals = 1 + (o.eval_every() > 0 ? (o.steps() - 1) / o.eval_every() : 0);
  double init = 0;
  if (cell.init == "gradinit") init = 2.0 * p.step_seconds * static_cast<double>(cell.config.gradinit.iterations());
  if (cell.init == "lsuv" || cell.init == "lion-lsuv") {
    init = 0.1 * p.step_seconds * static_cast<double>(cell.config.lsuv.samples());
  }
  return per_step * static_cast<double>(o.steps()) + p.image_eval_seconds * static_cast<double>(evals * eval_images) + init;
}

int64_t run_grid(const GridSpec& spec, const GridOptions& o) {
  TORCH_CHECK_VALUE(o.jobs >= 1, "--jobs must be >= 1, got ", o.jobs);
  const std::vector<GridCell> all = expand_grid(spec);
  const bool bf16 = std::any_of(all.begin(), all.end(), [](const GridCell& c) { return c.config.train.bf16(); });
  if (bf16 && o.device != "cpu") {
    throw UsageError("--device " + o.device + ": the grid sets train.bf16, which applies to the fused CPU blocks only");
  }
  const std::vector<GridCell> cells = shard_cells(all, o.shard_index, o.shard_count);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = std::max(1, cores / o.jobs);

  if (o.dry_run) {
    double total = 0;
    std::map<std::string, StepProbe> probes;
    const bool estimate = o.estimate && o.device == "cpu";  // the probes time CPU steps
    for (const auto& cell : cells) {
      if (!estimate) {
        std::cout << cell.key << "\n";
        continue;
      }
      const std::string key = probe_key(cell);
      if (!probes.count(key)) probes[key] = probe_cell_step(cell, threads);
      const double seconds = estimate_cell_seconds(cell, probes[key]);
      total += seconds;
      std::cout << cell.key << "  ~" << static_cast<int64_t>(seconds + 0.5) << " s\n";
    }
    std::cout << cells.size() << " cells (shard " << o.shard_index + 1 << "/" << o.shard_count << " of " << all.size() << ")";
    if (estimate) {
      std::cout << ", estimated " << static_cast<int64_t>(total / o.jobs + 0.5) << " s with " << o.jobs << " job(s) of "
                << threads << " thread(s) (timed probe steps of each model on this machine; data loading not included)";
    }
    std::cout << "\n";
    return 0;
  }

  ensure_writable_dir(o.out_dir);
  const std::string grid_json = join_path(o.out_dir, "grid.json");
  if (is_regular_file(grid_json)) {
    const GridSpec existing = grid_from_json(read_text(grid_json), "'" + grid_json + "'");
    if (existing.json != spec.json) {
      throw UsageError("'" + o.out_dir + "' holds a different grid (" + grid_json +
                       "); use another --out or the same preset/config to resume");
    }
  } else {
    write_file_atomic(grid_json, spec.json + "\n");
  }
  make_directories(join_path(o.out_dir, "logs"));
  const std::string results_path = join_path(o.out_dir, "results.jsonl");
  std::set<std::string> finished;
  for (const auto& r : read_results(results_path)) {
    if (r.status == "completed" || r.status == "diverged") finished.insert(r.key);
  }
  std::vector<const GridCell*> todo;
  for (const auto& cell : cells) {
    if (!finished.count(cell.key)) todo.push_back(&cell);
  }
  if (!o.quiet) {
    std::cout << "grid " << spec.name << ": " << cells.size() << " cells in this shard, " << cells.size() - todo.size()
              << " already finished, " << todo.size() << " to run with " << o.jobs << " job(s) x " << threads
              << " thread(s)\n";
  }
  const std::string binary = o.worker_binary.empty() ? "/proc/self/exe" : o.worker_binary;
  std::map<pid_t, std::pair<const GridCell*, std::chrono::steady_clock::time_point>> running;
  size_t next = 0, done = 0;
  int64_t failed = 0;
  bool forwarded_stop = false;
  while ((next < todo.size() && !stop_requested()) || !running.empty()) {
    // SIGINT / SIGTERM: start no new cell; running cells stop at their next step with
    // a checkpoint (the next `liondg grid` continues them).
    if (stop_requested() && !forwarded_stop) {
      forwarded_stop = true;
      for (const auto& item : running) ::kill(item.first, SIGTERM);
      if (!o.quiet) std::cout << "grid: stopping; running cells write a checkpoint, re-run to continue\n" << std::flush;
    }
    while (next < todo.size() && !stop_requested() && static_cast<int>(running.size()) < o.jobs) {
      const GridCell* cell = todo[next++];
      const std::string log = join_path(join_path(o.out_dir, "logs"), cell->key + ".log");
      posix_spawn_file_actions_t actions;
      posix_spawn_file_actions_init(&actions);
      posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
      const std::string threads_arg = std::to_string(threads);
      std::vector<std::string> args{"liondg",      "grid-worker", o.out_dir, cell->key, "--threads",
                                    threads_arg, "--device",    o.device};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      pid_t pid = 0;
      const int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
      posix_spawn_file_actions_destroy(&actions);
      if (rc != 0) throw DataError("cannot start a grid worker (" + binary + "): " + std::strerror(rc));
      running[pid] = {cell, std::chrono::steady_clock::now()};
    }
    int wstatus = 0;
    const pid_t pid = ::waitpid(-1, &wstatus, 0);
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) break;
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const GridCell* cell = it->second.first;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - it->second.second).count();
    running.erase(it);
    ++done;
    std::string status = "failed";
    for (const auto& r : read_results(results_path)) {
      if (r.key == cell->key) status = r.status;
    }
    const bool ok_exit = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
    if (status == "interrupted") {
      --done;
      if (!o.quiet) std::cout << cell->key << ": interrupted (its checkpoint is kept)\n" << std::flush;
      continue;
    }
    if (!ok_exit && status != "failed" && status != "diverged") status = "failed";
    if (status == "failed") {
      ++failed;
      // The worker records its own failures; a crash (signal) leaves no line, so record one.
      bool recorded = false;
      for (const auto& r : read_results(results_path)) recorded |= r.key == cell->key && r.status == "failed";
      if (!recorded) {
        Json line{{"key", cell->key}, {"dataset", cell->dataset}, {"model", cell->model}, {"init", cell->init},
                  {"seed", cell->seed}, {"sweep", cell->sweep}, {"run_dir", cell->config.out_dir}, {"status", "failed"},
                  {"error", "worker ended abnormally (" +
                                (WIFSIGNALED(wstatus) ? "signal " + std::to_string(WTERMSIG(wstatus))
                                                      : "exit code " + std::to_string(WEXITSTATUS(wstatus))) +
                                "); see logs/" + cell->key + ".log"}};
        append_result(results_path, line.dump());
      }
    }
    if (!o.quiet) {
      std::cout << "[" << done << "/" << todo.size() << "] " << cell->key << ": " << status << " (" << std::fixed
                << std::setprecision(1) << seconds << " s)" << std::defaultfloat << "\n"
                << std::flush;
    }
  }
  return failed;
}

MergeSummary merge_grids(const std::vector<std::string>& dirs, const std::string& out_dir) {
  if (dirs.empty()) throw UsageError("grid merge needs at least one grid directory");
  auto canonical = [](const std::string& p) {
    char buf[PATH_MAX];
    return realpath(p.c_str(), buf) != nullptr ? std::string(buf) : p;
  };
  // The inputs: one grid, the same specification everywhere.
  std::string spec_json;
  GridSpec spec;
  for (const auto& dir : dirs) {
    const std::string path = join_path(dir, "grid.json");
    if (!is_regular_file(path)) throw DataError("'" + dir + "' is not a grid directory: no grid.json");
    const GridSpec g = grid_from_json(read_text(path), "'" + path + "'");
    if (spec_json.empty()) {
      spec_json = g.json;
      spec = g;
    } else if (g.json != spec_json) {
      const Json a = Json::parse(spec_json), b = Json::parse(g.json);
      std::string keys;
      for (const auto& [k, v] : a.items()) {
        if (!b.contains(k) || b[k] != v) keys += (keys.empty() ? "" : ", ") + k;
      }
      for (const auto& [k, v] : b.items()) {
        if (!a.contains(k)) keys += (keys.empty() ? "" : ", ") + k;
      }
      throw UsageError("'" + path + "' describes a different grid than '" + join_path(dirs.front(), "grid.json") +
                       "' (differs in: " + keys + "); only shards or partial runs of one grid can be merged");
    }
    if (canonical(dir) == canonical(out_dir)) {
      throw UsageError("--out '" + out_dir + "' is one of the inputs; merge into a new directory");
    }
  }
  if (is_directory(out_dir) && !list_directory(out_dir).empty()) {
    throw UsageError("--out '" + out_dir + "' is not empty; merge into a new directory");
  }
  ensure_writable_dir(out_dir);

  // Per cell: the first finished result in argument order, else the first failed one.
  struct Pick {
    std::string dir;
    CellResult result;
  };
  std::map<std::string, Pick> picked;
  MergeSummary m;
  for (const auto& dir : dirs) {
    for (const auto& r : read_results(join_path(dir, "results.jsonl"))) {
      const bool finished = r.status == "completed" || r.status == "diverged";
      auto it = picked.find(r.key);
      if (it == picked.end()) {
        picked[r.key] = {dir, r};
        continue;
      }
      const bool kept_finished = it->second.result.status == "completed" || it->second.result.status == "diverged";
      if (finished && kept_finished) {
        ++m.duplicates;
      } else if (finished) {
        it->second = {dir, r};
      }
    }
  }
  write_file_atomic(join_path(out_dir, "grid.json"), spec_json + "\n");
  const std::string results = join_path(out_dir, "results.jsonl");
  for (const auto& cell : expand_grid(spec)) {
    ++m.cells;
    auto it = picked.find(cell.key);
    if (it == picked.end()) {
      ++m.missing;
      continue;
    }
    const CellResult& r = it->second.result;
    (r.status == "failed" ? m.failed : m.finished) += 1;
    const Json line = Json::parse(r.json);
    const std::string run_dir = line.value("run_dir", "");
    if (!run_dir.empty() && is_directory(join_path(it->second.dir, run_dir))) {
      copy_tree(join_path(it->second.dir, run_dir), join_path(out_dir, run_dir));
    }
    append_result(results, r.json);
  }
  return m;
}

}  // namespace liondg
