// Tables, figures and the report of a grid.

#include <liondg/errors.h>
#include <liondg/experiment/grid.h>
#include <liondg/experiment/run.h>
#include <liondg/report/report.h>
#include <liondg/stats/stats.h>
#include <liondg/util/fs.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <map>
#include <optional>
#include <set>
#include <sstream>

namespace liondg {
namespace {

using Json = nlohmann::json;
constexpr double kAlpha = 0.05;             // significance level of the claims
constexpr double kComparableAccuracy = 0.01;  // |delta val acc| treated as comparable (1 point)

// ------------------------------------------------------------------ loading

struct Run {
  std::string key, dataset, group, init, status, run_dir;
  uint64_t seed = 0;
  double val_acc = NAN;
  std::optional<double> steps_to_target;
  double budget = 0;  // the step budget (steps_run for a diverged run)
};

struct Series {  // per step of one run (NaN where not recorded)
  std::vector<double> step, window_acc, grad_ratio, aux_norm0, val_acc;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : line) {
    if (ch == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  out.push_back(cur);
  return out;
}

double to_double(const std::string& s) {
  if (s.empty()) return NAN;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  return end == s.c_str() ? NAN : v;
}

Series read_series(const std::string& csv_path) {
  Series s;
  std::ifstream in(csv_path);
  std::string line;
  if (!std::getline(in, line)) return s;
  const auto header = split(line, ',');
  auto col = [&](const std::string& name) {
    auto it = std::find(header.begin(), header.end(), name);
    return it == header.end() ? -1 : static_cast<int>(it - header.begin());
  };
  const int c_step = col("step"), c_acc = col("window_acc"), c_ratio = col("grad_ratio"),
            c_norm = col("aux_weight_norm_0"), c_val = col("val_main_acc");
  while (std::getline(in, line)) {
    const auto f = split(line, ',');
    auto get = [&](int c) { return c >= 0 && c < static_cast<int>(f.size()) ? to_double(f[c]) : NAN; };
    s.step.push_back(get(c_step));
    s.window_acc.push_back(get(c_acc));
    s.grad_ratio.push_back(get(c_ratio));
    s.aux_norm0.push_back(get(c_norm));
    s.val_acc.push_back(get(c_val));
  }
  return s;
}

// ------------------------------------------------------------------ formatting

std::string fmt(double v, int precision = 4) {
  if (std::isnan(v)) return "n/a";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream s;
  s << std::fixed << std::setprecision(precision) << v;
  return s.str();
}

std::string fmt_p(double p) {
  if (std::isnan(p)) return "n/a";
  std::ostringstream s;
  if (p < 1e-4) s << std::scientific << std::setprecision(2) << p;
  else s << std::fixed << std::setprecision(4) << p;
  return s.str();
}

Json num(double v) {
  if (std::isnan(v)) return nullptr;
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

struct Table {
  std::string title;
  std::vector<std::string> headers;
  std::vector<std::vector<std::string>> rows;  // display strings
  Json json = Json::array();                   // typed rows
};

std::string markdown(const Table& t) {
  std::ostringstream s;
  s << "| ";
  for (const auto& h : t.headers) s << h << " | ";
  s << "\n|";
  for (size_t i = 0; i < t.headers.size(); ++i) s << "---|";
  s << "\n";
  for (const auto& r : t.rows) {
    s << "| ";
    for (const auto& c : r) s << c << " | ";
    s << "\n";
  }
  return s.str();
}

std::string csv_escape(const std::string& v) {
  if (v.find_first_of(",\"\n") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string html_escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

std::string html_table(const Table& t) {
  std::ostringstream s;
  s << "<table><thead><tr>";
  for (const auto& h : t.headers) s << "<th>" << html_escape(h) << "</th>";
  s << "</tr></thead><tbody>";
  for (const auto& r : t.rows) {
    s << "<tr>";
    for (const auto& c : r) s << "<td>" << html_escape(c) << "</td>";
    s << "</tr>";
  }
  s << "</tbody></table>";
  return s.str();
}

// ------------------------------------------------------------------ aggregation

struct Cell {  // one (dataset, group, init)
  std::vector<const Run*> runs;
  std::vector<double> val_acc() const {
    std::vector<double> v;
    for (auto* r : runs) {
      if (r->status == "completed") v.push_back(r->val_acc);
    }
    return v;
  }
  // Steps to target; a run that never reached it counts as its step budget (censored).
  std::vector<double> steps() const {
    std::vector<double> v;
    for (auto* r : runs) {
      if (r->status != "failed") v.push_back(r->steps_to_target ? *r->steps_to_target : r->budget);
    }
    return v;
  }
  int converged() const {
    int n = 0;
    for (auto* r : runs) n += r->steps_to_target.has_value();
    return n;
  }
};

struct Model {
  std::vector<Run> runs;
  std::vector<std::string> methods;  // grid order
  std::vector<std::pair<std::string, std::string>> groups;  // (dataset, group) in order
  std::map<std::pair<std::string, std::string>, std::map<std::string, Cell>> cells;
  Json grid;
};

Model load(const std::string& dir) {
  Model m;
  const std::string results = join_path(dir, "results.jsonl");
  if (!is_regular_file(results)) throw DataError("'" + dir + "' holds no results.jsonl: not a grid directory");
  if (is_regular_file(join_path(dir, "grid.json"))) m.grid = Json::parse(read_text(join_path(dir, "grid.json")));
  for (const auto& line : read_results(results)) {
    const Json j = Json::parse(line.json);
    Run r;
    r.key = line.key;
    r.status = line.status;
    r.dataset = j.value("dataset", "");
    r.init = j.value("init", "");
    r.seed = j.value("seed", uint64_t{0});
    r.run_dir = j.value("run_dir", "");
    r.group = j.value("model", "");
    if (j.contains("sweep") && !j["sweep"].empty()) {
      std::string label;
      for (const auto& [k, v] : j["sweep"].items()) label += (label.empty() ? "" : ", ") + k + "=" + v.dump();
      r.group += " [" + label + "]";
    }
    if (j.contains("summary")) {
      const Json& s = j["summary"];
      if (s.contains("val_acc") && s["val_acc"].is_number()) r.val_acc = s["val_acc"].get<double>();
      if (s.contains("steps_to_target") && s["steps_to_target"].is_number()) r.steps_to_target = s["steps_to_target"].get<double>();
      r.budget = s.value("steps_run", 0.0);
    }
    if (m.grid.contains("train") && m.grid["train"].contains("steps") && r.status == "completed") {
      r.budget = m.grid["train"]["steps"].get<double>();
    }
    m.runs.push_back(r);
  }
  if (m.runs.empty()) throw DataError("'" + results + "' holds no finished cells yet");
  if (m.grid.contains("inits")) {
    for (const auto& i : m.grid["inits"]) m.methods.push_back(i.get<std::string>());
  }
  for (const auto& r : m.runs) {
    if (std::find(m.methods.begin(), m.methods.end(), r.init) == m.methods.end()) m.methods.push_back(r.init);
    const auto g = std::make_pair(r.dataset, r.group);
    if (std::find(m.groups.begin(), m.groups.end(), g) == m.groups.end()) m.groups.push_back(g);
  }
  for (const auto& r : m.runs) m.cells[{r.dataset, r.group}][r.init].runs.push_back(&r);
  return m;
}

std::string mean_pm_std(const std::vector<double>& v, double scale, int precision) {
  if (v.empty()) return "n/a";
  const double sd = stats::sample_std(v);
  return fmt(stats::mean(v) * scale, precision) + " ± " + (std::isnan(sd) ? std::string("n/a") : fmt(sd * scale, precision));
}

// ------------------------------------------------------------------ tables

Table table1(const Model& m) {
  Table t{"Table 1: validation accuracy and speedup to the target training accuracy", {"dataset", "model", "method", "n", "val acc (%) mean ± std", "val acc 95% CI", "steps to target mean ± std", "converged", "speedup vs He (%)"}, {}};
  for (const auto& g : m.groups) {
    const auto& cells = m.cells.at(g);
    const std::vector<double> he = cells.count("he") ? cells.at("he").steps() : std::vector<double>{};
    for (const auto& method : m.methods) {
      if (!cells.count(method)) continue;
      const Cell& c = cells.at(method);
      const double speedup = method == "he" || he.empty() ? NAN : stats::speedup_percent(he, c.steps());
      const stats::Interval ci = stats::mean_confidence_interval(c.val_acc());
      t.rows.push_back({g.first, g.second, method, std::to_string(c.val_acc().size()), mean_pm_std(c.val_acc(), 100, 2),
                        "[" + fmt(100 * ci.low, 2) + ", " + fmt(100 * ci.high, 2) + "]", mean_pm_std(c.steps(), 1, 1), std::to_string(c.converged()) + "/" + std::to_string(c.runs.size()),
                        method == "he" ? "baseline" : fmt(speedup, 1)});
      t.json.push_back({{"dataset", g.first}, {"model", g.second}, {"method", method}, {"n", c.val_acc().size()},
                        {"val_acc_mean", num(stats::mean(c.val_acc()))}, {"val_acc_std", num(stats::sample_std(c.val_acc()))},
                        {"val_acc_ci95", {num(ci.low), num(ci.high)}},
                        {"steps_mean", num(stats::mean(c.steps()))}, {"steps_std", num(stats::sample_std(c.steps()))},
                        {"converged", c.converged()}, {"runs", c.runs.size()}, {"speedup_percent", num(speedup)}});
    }
  }
  return t;
}

Table table2(const Model& m) {
  Table t{"Table 2: architecture comparison, He vs LION-DG", {"dataset", "model", "He val acc (%)", "LION-DG val acc (%)", "Δ acc (points)", "speedup (%)"}, {}};
  for (const auto& g : m.groups) {
    const auto& cells = m.cells.at(g);
    if (!cells.count("he") || !cells.count("lion-dg")) continue;
    const Cell &he = cells.at("he"), &lion = cells.at("lion-dg");
    const double delta = 100 * (stats::mean(lion.val_acc()) - stats::mean(he.val_acc()));
    const double speedup = stats::speedup_percent(he.steps(), lion.steps());
    t.rows.push_back({g.first, g.second, mean_pm_std(he.val_acc(), 100, 2), mean_pm_std(lion.val_acc(), 100, 2),
                      fmt(delta, 2), fmt(speedup, 1)});
    t.json.push_back({{"dataset", g.first}, {"model", g.second}, {"he_val_acc", num(stats::mean(he.val_acc()))},
                      {"lion_dg_val_acc", num(stats::mean(lion.val_acc()))}, {"delta_points", num(delta)},
                      {"speedup_percent", num(speedup)}});
  }
  return t;
}

std::vector<uint64_t> seeds_of(const Model& m) {
  std::vector<uint64_t> seeds;
  for (const auto& r : m.runs) {
    if (std::find(seeds.begin(), seeds.end(), r.seed) == seeds.end()) seeds.push_back(r.seed);
  }
  return seeds;
}

Table per_seed_table(const Model& m, bool accuracy) {
  Table t;
  t.title = accuracy ? "Table 6: final validation accuracy (%) per seed" : "Table 7: steps to target per seed";
  t.headers = {"dataset", "model", "method"};
  const auto seeds = seeds_of(m);
  for (auto s : seeds) t.headers.push_back("seed " + std::to_string(s));
  t.headers.push_back("mean");
  if (!accuracy) t.headers.push_back("std");
  for (const auto& g : m.groups) {
    for (const auto& method : m.methods) {
      if (!m.cells.at(g).count(method)) continue;
      const Cell& c = m.cells.at(g).at(method);
      std::vector<std::string> row{g.first, g.second, method};
      Json jr{{"dataset", g.first}, {"model", g.second}, {"method", method}};
      for (auto s : seeds) {
        std::string cell = "-";
        for (auto* r : c.runs) {
          if (r->seed != s) continue;
          if (r->status == "failed") cell = "failed";
          else if (accuracy) cell = r->status == "completed" ? fmt(100 * r->val_acc, 2) : r->status;
          else cell = r->steps_to_target ? fmt(*r->steps_to_target, 0) : "not reached (" + fmt(r->budget, 0) + ")";
          jr["seed_" + std::to_string(s)] = accuracy ? num(r->val_acc) : (r->steps_to_target ? Json(*r->steps_to_target) : Json(nullptr));
        }
        row.push_back(cell);
      }
      const auto values = accuracy ? c.val_acc() : c.steps();
      row.push_back(fmt(stats::mean(values) * (accuracy ? 100 : 1), accuracy ? 2 : 1));
      jr["mean"] = num(stats::mean(values));
      if (!accuracy) {
        row.push_back(fmt(stats::sample_std(values), 1));
        jr["std"] = num(stats::sample_std(values));
      }
      t.rows.push_back(row);
      t.json.push_back(jr);
    }
  }
  return t;
}

struct SigRow {
  std::string dataset, model, method, metric;
  std::vector<double> a, b;
  stats::WelchResult w;
  double d, g, p_holm;
};

std::vector<SigRow> significance_rows(const Model& m) {
  std::vector<SigRow> rows;
  for (const auto& g : m.groups) {
    const auto& cells = m.cells.at(g);
    if (!cells.count("he")) continue;
    for (const std::string metric : {"steps_to_target", "val_acc"}) {
      std::vector<size_t> idx;
      for (const auto& method : m.methods) {
        if (method == "he" || !cells.count(method)) continue;
        SigRow r;
        r.dataset = g.first;
        r.model = g.second;
        r.method = method;
        r.metric = metric;
        r.a = metric == "val_acc" ? cells.at(method).val_acc() : cells.at(method).steps();
        r.b = metric == "val_acc" ? cells.at("he").val_acc() : cells.at("he").steps();
        r.w = stats::welch_t_test(r.a, r.b);
        r.d = stats::cohens_d(r.a, r.b);
        r.g = stats::hedges_g(r.a, r.b);
        idx.push_back(rows.size());
        rows.push_back(r);
      }
      std::vector<double> p;
      for (size_t i : idx) p.push_back(rows[i].w.p);
      const auto adjusted = stats::holm_adjust(p);
      for (size_t k = 0; k < idx.size(); ++k) rows[idx[k]].p_holm = adjusted[k];
    }
  }
  return rows;
}

Table significance_table(const std::vector<SigRow>& rows) {
  Table t{"Significance vs He (Welch's t-test, Cohen's d, Hedges' g, Holm-adjusted p across methods)",
          {"dataset", "model", "method", "metric", "n_method", "n_baseline", "mean_method", "mean_baseline", "t", "df", "p",
           "cohens_d", "hedges_g", "p_holm"},
          {}};
  for (const auto& r : rows) {
    t.rows.push_back({r.dataset, r.model, r.method, r.metric, std::to_string(r.a.size()), std::to_string(r.b.size()),
                      fmt(stats::mean(r.a), 4), fmt(stats::mean(r.b), 4), fmt(r.w.t, 3), fmt(r.w.df, 2), fmt_p(r.w.p),
                      fmt(r.d, 3), fmt(r.g, 3), fmt_p(r.p_holm)});
    t.json.push_back({{"dataset", r.dataset}, {"model", r.model}, {"method", r.method}, {"metric", r.metric},
                      {"n_method", r.a.size()}, {"n_baseline", r.b.size()}, {"mean_method", num(stats::mean(r.a))},
                      {"mean_baseline", num(stats::mean(r.b))}, {"t", num(r.w.t)}, {"df", num(r.w.df)}, {"p", num(r.w.p)},
                      {"cohens_d", num(r.d)}, {"hedges_g", num(r.g)}, {"p_holm", num(r.p_holm)}});
  }
  return t;
}

std::string csv_of(const Table& t, bool raw_numbers) {
  std::ostringstream s;
  for (size_t i = 0; i < t.headers.size(); ++i) s << (i ? "," : "") << csv_escape(t.headers[i]);
  s << "\n";
  if (raw_numbers) {  // machine-readable: the typed JSON values in header order
    for (const auto& row : t.json) {
      bool first = true;
      for (const auto& h : t.headers) {
        const Json& v = row.contains(h) ? row.at(h) : Json(nullptr);
        s << (first ? "" : ",") << (v.is_null() ? "" : v.is_string() ? csv_escape(v.get<std::string>()) : v.dump());
        first = false;
      }
      s << "\n";
    }
  } else {
    for (const auto& r : t.rows) {
      for (size_t i = 0; i < r.size(); ++i) s << (i ? "," : "") << csv_escape(r[i]);
      s << "\n";
    }
  }
  return s.str();
}

// ------------------------------------------------------------------ figures (gnuplot)

struct MeanBand {
  std::vector<double> step, mean, low, high;
};

// Mean and min/max over runs at each step where at least one run has a value.
MeanBand band(const std::vector<Series>& runs, std::vector<double> Series::*field) {
  MeanBand b;
  size_t n = 0;
  for (const auto& r : runs) n = std::max(n, r.step.size());
  for (size_t i = 0; i < n; ++i) {
    std::vector<double> v;
    double step = NAN;
    for (const auto& r : runs) {
      if (i < r.step.size() && !std::isnan((r.*field)[i])) {
        v.push_back((r.*field)[i]);
        step = r.step[i];
      }
    }
    if (v.empty()) continue;
    b.step.push_back(step);
    b.mean.push_back(stats::mean(v));
    b.low.push_back(*std::min_element(v.begin(), v.end()));
    b.high.push_back(*std::max_element(v.begin(), v.end()));
  }
  return b;
}

std::string safe(const std::string& s) {
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ? c : '_';
  return out;
}

class Plotter {
 public:
  explicit Plotter(std::string dir) : dir_(std::move(dir)) {
    available_ = std::system("command -v gnuplot > /dev/null 2>&1") == 0;
  }
  bool available() const { return available_; }
  // Writes `name`.dat (blocks separated by two blank lines) and renders `name`.png/.svg.
  bool plot(const std::string& name, const std::string& data, const std::string& script_body,
            std::vector<std::string>& files) {
    const std::string dat = join_path(dir_, name + ".dat");
    write_file_atomic(dat, data);
    files.push_back(dat);
    if (!available_) return false;
    bool ok = true;
    for (const auto& [ext, term] : std::vector<std::pair<std::string, std::string>>{
             {"png", "pngcairo size 900,560 noenhanced font 'Sans,10'"}, {"svg", "svg size 900,560 noenhanced font 'Sans,10'"}}) {
      const std::string out = join_path(dir_, name + "." + ext);
      const std::string gp = join_path(dir_, name + "." + ext + ".gp");
      write_file_atomic(gp, "set terminal " + term + "\nset output '" + out + "'\ndatafile = '" + dat + "'\n" +
                                script_body + "\nunset output\n");
      ok = std::system(("gnuplot '" + gp + "' > '" + gp + ".log' 2>&1").c_str()) == 0 && ok;
      std::remove((gp + ".log").c_str());
      std::remove(gp.c_str());
      if (is_regular_file(out)) files.push_back(out);
    }
    return ok;
  }

 private:
  std::string dir_;
  bool available_ = false;
};

std::string band_block(const MeanBand& b) {
  std::ostringstream s;
  s.precision(8);
  for (size_t i = 0; i < b.step.size(); ++i) s << b.step[i] << ' ' << b.mean[i] << ' ' << b.low[i] << ' ' << b.high[i] << '\n';
  return s.str() + "\n\n";
}

}  // namespace

ReportResult write_report(const std::string& dir) {
  const Model m = load(dir);
  ReportResult result;
  const std::string tables_dir = join_path(dir, "tables"), figures_dir = join_path(dir, "figures");
  ensure_writable_dir(tables_dir);
  ensure_writable_dir(figures_dir);

  // ---------------- tables
  const auto sig_rows = significance_rows(m);
  std::vector<std::pair<std::string, Table>> tables{{"table1", table1(m)},
                                                    {"table2", table2(m)},
                                                    {"table6", per_seed_table(m, true)},
                                                    {"table7", per_seed_table(m, false)},
                                                    {"significance", significance_table(sig_rows)}};
  for (const auto& [name, t] : tables) {
    for (const auto& [ext, content] : std::vector<std::pair<std::string, std::string>>{
             {"md", "### " + t.title + "\n\n" + markdown(t)}, {"csv", csv_of(t, name == "significance")}, {"json", t.json.dump(2) + "\n"}}) {
      const std::string path = join_path(tables_dir, name + "." + ext);
      write_file_atomic(path, content);
      result.files.push_back(path);
    }
  }
  result.table1_markdown = markdown(tables[0].second);

  // ---------------- figures
  Plotter plotter(figures_dir);
  if (!plotter.available()) result.notes.push_back("gnuplot not found: figures skipped (data files written)");
  std::vector<std::pair<std::string, std::string>> figures;  // (title, file stem)
  const double target = m.grid.contains("train") && m.grid["train"].contains("target_acc")
                            ? m.grid["train"]["target_acc"].get<double>()
                            : 0.70;
  std::map<std::string, std::map<std::string, std::vector<Series>>> series;  // group label -> method -> runs
  for (const auto& g : m.groups) {
    const std::string label = g.first + " / " + g.second;
    for (const auto& method : m.methods) {
      if (!m.cells.at(g).count(method)) continue;
      for (auto* r : m.cells.at(g).at(method).runs) {
        if (r->status == "failed") continue;
        series[label][method].push_back(read_series(join_path(join_path(dir, r->run_dir), "metrics.csv")));
      }
    }
  }
  for (const auto& [label, by_method] : series) {
    const std::string stem = safe(label);
    double last_step = 1;
    for (const auto& [method, runs] : by_method) {
      for (const auto& r : runs) {
        if (!r.step.empty()) last_step = std::max(last_step, r.step.back());
      }
    }
    const int64_t zoom = static_cast<int64_t>(std::min(200.0, last_step));
    std::string acc_data, ratio_data, norm_data, acc_plot, ratio_plot, zoom_plot, norm_plot;
    int block = 0;
    for (const auto& [method, runs] : by_method) {
      acc_data += band_block(band(runs, &Series::window_acc)) + band_block(band(runs, &Series::val_acc));
      ratio_data += band_block(band(runs, &Series::grad_ratio));
      norm_data += band_block(band(runs, &Series::aux_norm0));
      const std::string sep = block ? ", " : "";
      const std::string lc = "lc " + std::to_string(block + 1);
      acc_plot += sep + "datafile index " + std::to_string(2 * block) + " using 1:3:4 with filledcurves fs transparent solid 0.15 " + lc +
                  " notitle, datafile index " + std::to_string(2 * block) + " using 1:2 with lines lw 2 " + lc + " title '" + method +
                  " (train, mean of seeds)', datafile index " + std::to_string(2 * block + 1) + " using 1:2 with linespoints pt 7 dt 2 " + lc +
                  " title '" + method + " (val)'";
      ratio_plot += sep + "datafile index " + std::to_string(block) + " using 1:3:4 with filledcurves fs transparent solid 0.15 " + lc +
                    " notitle, datafile index " + std::to_string(block) + " using 1:2 with lines lw 2 " + lc + " title '" + method + "'";
      norm_plot += sep + "datafile index " + std::to_string(block) + " using 1:2 with lines lw 2 " + lc + " title '" + method + "'";
      ++block;
    }
    plotter.plot("fig1_accuracy_" + stem, acc_data,
                 "set title 'Figure 1 (left): accuracy, " + label + "'\nset xlabel 'step'\nset ylabel 'accuracy'\nset key bottom right\n"
                 "set yrange [0:1]\nset arrow from graph 0, first " + fmt(target, 3) + " to graph 1, first " + fmt(target, 3) +
                     " nohead dt 3 lc rgb 'black'\nplot " + acc_plot,
                 result.files);
    figures.push_back({"Figure 1 (left): training (window mean) and validation accuracy, " + label, "fig1_accuracy_" + stem});
    plotter.plot("fig1_grad_ratio_" + stem, ratio_data,
                 "set multiplot layout 1,2 title 'Figure 1 (right): aux/main backbone-gradient ratio, " + label + "'\n"
                 "set xlabel 'step'\nset ylabel '||grad aux|| / ||grad main||'\nset key top left\nplot " + ratio_plot +
                     "\nset xrange [0:" + std::to_string(zoom) + "]\nset title 'first " + std::to_string(zoom) +
                     " steps (awakening)'\nplot " + ratio_plot + "\nunset multiplot",
                 result.files);
    figures.push_back({"Figure 1 (right): aux/main gradient ratio, with the first 200 steps", "fig1_grad_ratio_" + stem});
    plotter.plot("aux_weight_norm_" + stem, norm_data,
                 "set title 'Auxiliary head 0 logits-layer weight norm (Proposition 2), " + label + "'\nset xlabel 'step'\n"
                 "set ylabel '||W_aux||_F'\nset key top left\nplot " + norm_plot,
                 result.files);
    figures.push_back({"Auxiliary-head weight norm against step, " + label, "aux_weight_norm_" + stem});
  }
  {
    // Figure 2: validation accuracy per method and architecture; steps to target per seed.
    std::string data, data_steps, plot, plot_steps;
    int block = 0;
    for (const auto& g : m.groups) {
      std::ostringstream s, st;
      int x = 0;
      for (const auto& method : m.methods) {
        ++x;
        if (!m.cells.at(g).count(method)) continue;
        const Cell& c = m.cells.at(g).at(method);
        const auto v = c.val_acc();
        if (!v.empty()) s << x << ' ' << stats::mean(v) * 100 << ' ' << (v.size() > 1 ? stats::sample_std(v) * 100 : 0.0) << " \"" << method << "\"\n";
        for (auto* r : c.runs) {
          if (r->status != "failed") st << x << ' ' << (r->steps_to_target ? *r->steps_to_target : r->budget) << ' ' << (r->steps_to_target ? 1 : 0) << "\n";
        }
      }
      data += s.str() + "\n\n";
      data_steps += st.str() + "\n\n";
      const std::string sep = block ? ", " : "";
      plot += sep + "datafile index " + std::to_string(block) + " using ($1+" + fmt(0.15 * block, 2) + "):2:3:xtic(4) with yerrorbars pt 7 ps 1.2 title '" + g.first + " / " + g.second + "'";
      plot_steps += sep + "datafile index " + std::to_string(block) + " using ($1+" + fmt(0.15 * block, 2) + "):2 with points pt 7 ps 1.2 title '" + g.first + " / " + g.second + "'";
      ++block;
    }
    plotter.plot("fig2_val_acc", data,
                 "set title 'Figure 2: final validation accuracy (mean ± std over seeds)'\nset ylabel 'validation accuracy (%)'\n"
                 "set xrange [0.5:" + std::to_string(m.methods.size() + 1) + "]\nset key bottom right\nplot " + plot,
                 result.files);
    figures.push_back({"Figure 2: validation accuracy per method and architecture", "fig2_val_acc"});
    std::string xtics;
    for (size_t i = 0; i < m.methods.size(); ++i) xtics += (i ? ", " : "") + std::string("'") + m.methods[i] + "' " + std::to_string(i + 1);
    plotter.plot("steps_to_target", data_steps,
                 "set title 'Steps to target per seed (runs that never reached it at the budget)'\nset ylabel 'steps'\n"
                 "set xrange [0.5:" + std::to_string(m.methods.size() + 1) + "]\nset xtics (" + xtics + ")\nset key top right\nplot " + plot_steps,
                 result.files);
    figures.push_back({"Steps to target per seed", "steps_to_target"});
  }

  // ---------------- claims
  struct Claim {
    std::string claim, evidence, test, verdict;
  };
  std::vector<Claim> claims;
  auto find_sig = [&](const std::string& dataset, const std::string& model, const std::string& method, const std::string& metric)
      -> const SigRow* {
    for (const auto& r : sig_rows) {
      if (r.dataset == dataset && r.model == model && r.method == method && r.metric == metric) return &r;
    }
    return nullptr;
  };
  auto speedup_claim = [&](const std::string& title, const std::string& model_name, const std::string& only_dataset) {
    Claim c{title, "", "Welch's t-test on steps to target vs He (two-sided, alpha 0.05); accuracy comparable if |Δ| < 1 point or p >= 0.05", ""};
    int support = 0, against = 0, tested = 0;
    for (const auto& g : m.groups) {
      if (g.second != model_name || (!only_dataset.empty() && g.first != only_dataset)) continue;
      const SigRow* s = find_sig(g.first, g.second, "lion-dg", "steps_to_target");
      const SigRow* a = find_sig(g.first, g.second, "lion-dg", "val_acc");
      if (!s || !a) continue;
      ++tested;
      const double speedup = stats::speedup_percent(s->b, s->a);
      const double dacc = stats::mean(a->a) - stats::mean(a->b);
      const bool comparable = std::abs(dacc) < kComparableAccuracy || !(a->w.p < kAlpha);
      c.evidence += g.first + "/" + g.second + ": speedup " + fmt(speedup, 1) + "% (p = " + fmt_p(s->w.p) + ", d = " + fmt(s->d, 2) +
                    ", n = " + std::to_string(s->a.size()) + " vs " + std::to_string(s->b.size()) + "), Δ val acc " +
                    fmt(100 * dacc, 2) + " points (p = " + fmt_p(a->w.p) + "). ";
      if (speedup > 0 && s->w.p < kAlpha && comparable) ++support;
      else if ((speedup <= 0 && s->w.p < kAlpha) || !comparable) ++against;
    }
    c.verdict = tested == 0 ? "not tested by this grid"
                : support == tested ? "supported"
                : against > 0 ? "not supported"
                              : "inconclusive at this n";
    claims.push_back(c);
  };
  speedup_claim("LION-DG speeds up DenseNet-DS training with comparable accuracy", "densenet-ds", "");
  speedup_claim("LION-DG speeds up ResNet-DS on CIFAR-100", "resnet-ds", "cifar100");
  {
    Claim c{"The LION-LSUV hybrid reaches the best validation accuracy", "", "highest mean validation accuracy per dataset/model; Welch's t-test against the runner-up", ""};
    int tested = 0, best = 0, significant = 0;
    for (const auto& g : m.groups) {
      const auto& cells = m.cells.at(g);
      if (!cells.count("lion-lsuv")) continue;
      ++tested;
      std::string top, second;
      double top_acc = -1, second_acc = -1;
      for (const auto& [method, cell] : cells) {
        const double a = stats::mean(cell.val_acc());
        if (std::isnan(a)) continue;
        if (a > top_acc) second = top, second_acc = top_acc, top = method, top_acc = a;
        else if (a > second_acc) second = method, second_acc = a;
      }
      c.evidence += g.first + "/" + g.second + ": best " + top + " (" + fmt(100 * top_acc, 2) + "%), runner-up " + second + " (" +
                    fmt(100 * second_acc, 2) + "%). ";
      if (top == "lion-lsuv") {
        ++best;
        if (!second.empty() && stats::welch_t_test(cells.at(top).val_acc(), cells.at(second).val_acc()).p < kAlpha) ++significant;
      }
    }
    c.verdict = tested == 0 ? "not tested by this grid"
                : best < tested ? "not supported"
                : significant == tested ? "supported"
                                        : "inconclusive at this n (best, but not significantly)";
    claims.push_back(c);
  }
  {
    Claim c{"Fixup and ReZero give no benefit on DenseNet-DS", "", "Welch's t-test on steps to target vs He; a benefit is a significant speedup", ""};
    int tested = 0, benefit = 0;
    for (const auto& g : m.groups) {
      if (g.second != "densenet-ds") continue;
      for (const std::string method : {"fixup", "rezero"}) {
        const SigRow* s = find_sig(g.first, g.second, method, "steps_to_target");
        if (!s) continue;
        ++tested;
        const double speedup = stats::speedup_percent(s->b, s->a);
        c.evidence += g.first + " " + method + ": speedup " + fmt(speedup, 1) + "% (p = " + fmt_p(s->w.p) + "). ";
        if (speedup > 0 && s->w.p < kAlpha) ++benefit;
      }
    }
    c.verdict = tested == 0 ? "not tested by this grid" : benefit == 0 ? "supported (no significant benefit)" : "not supported";
    claims.push_back(c);
  }
  {
    Claim c{"Gradient decoupling (Proposition 1): at init, LION-DG's auxiliary losses send exactly zero gradient into the backbone",
            "", "the recorded ||d(alpha sum L_aux)/d theta_backbone|| at step 1 (the initialization) of every LION-DG run", ""};
    int tested = 0, zero = 0;
    for (const auto& r : m.runs) {
      if ((r.init != "lion-dg" && r.init != "lion-lsuv") || r.status == "failed") continue;
      std::ifstream in(join_path(join_path(dir, r.run_dir), "metrics.csv"));
      std::string header, first;
      std::getline(in, header);
      std::getline(in, first);
      const auto h = split(header, ','), f = split(first, ',');
      auto it = std::find(h.begin(), h.end(), "grad_aux_norm");
      if (it == h.end() || static_cast<size_t>(it - h.begin()) >= f.size() || f[it - h.begin()].empty()) continue;
      ++tested;
      zero += to_double(f[it - h.begin()]) == 0.0;
    }
    c.evidence = std::to_string(zero) + " of " + std::to_string(tested) + " zero-head runs have exactly zero aux gradient into the backbone at step 1.";
    c.verdict = tested == 0 ? "not tested by this grid" : zero == tested ? "supported" : "not supported";
    claims.push_back(c);
  }
  {
    Claim c{"Gradient awakening (Proposition 2): the zero-initialized heads grow and the auxiliary gradient phases in", "",
            "auxiliary head 0 weight norm at step 1 and at the end, and the aux/main gradient ratio, of every LION-DG run", ""};
    int tested = 0, awake = 0;
    for (const auto& r : m.runs) {
      if (r.init != "lion-dg" || r.status == "failed") continue;
      const Series s = read_series(join_path(join_path(dir, r.run_dir), "metrics.csv"));
      if (s.aux_norm0.size() < 2) continue;
      ++tested;
      double last_ratio = NAN;
      for (double v : s.grad_ratio) {
        if (!std::isnan(v)) last_ratio = v;
      }
      awake += s.aux_norm0.front() == 0.0 && s.aux_norm0.back() > 0.0 && last_ratio > 0.0;
    }
    c.evidence = std::to_string(awake) + " of " + std::to_string(tested) + " LION-DG runs start at norm 0 and end with a positive norm and ratio.";
    c.verdict = tested == 0 ? "not tested by this grid" : awake == tested ? "supported" : "not supported";
    claims.push_back(c);
  }

  // ---------------- report.md / report.html
  std::ostringstream md, html;
  const auto versions = version_info();
  md << "# LION-DG grid report: " << m.grid.value("name", std::string("grid")) << "\n\n";
  md << "Runs: " << m.runs.size() << " cells from `" << dir << "/results.jsonl`. Versions: liondg " << versions.at("liondg")
     << " (" << versions.at("git_revision") << "), libtorch " << versions.at("libtorch") << ".\n\n";
  md << "Conventions: mean ± sample standard deviation over seeds; steps to target = first step whose mean training accuracy "
        "over the target window reaches the target; a run that never reaches it enters the statistics at its step budget "
        "(a censored value that favours no method); speedup = 100 (mean_He - mean_method) / mean_He; p-values from Welch's "
        "t-test (two-sided), Holm-adjusted across the methods compared with He; Cohen's d = (mean_method - mean_He) / "
        "sqrt((s_method^2 + s_He^2)/2).\n\n";
  md << "## Claims\n\n| claim | measured | test | verdict |\n|---|---|---|---|\n";
  html << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>LION-DG grid report</title><style>"
          "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #bbb;padding:3px 8px;font-size:90%}th{background:#eee}pre{background:#f6f6f6;padding:1em;overflow:auto}"
          "</style></head><body>";
  html << "<h1>LION-DG grid report: " << html_escape(m.grid.value("name", std::string("grid"))) << "</h1>";
  Table claims_table{"Claims", {"claim", "measured", "test", "verdict"}, {}};
  for (const auto& c : claims) {
    md << "| " << c.claim << " | " << c.evidence << " | " << c.test << " | **" << c.verdict << "** |\n";
    claims_table.rows.push_back({c.claim, c.evidence, c.test, c.verdict});
  }
  html << "<h2>Claims</h2>" << html_table(claims_table);
  md << "\n";
  for (const auto& [name, t] : tables) {
    md << "## " << t.title << "\n\n" << markdown(t) << "\n(`tables/" << name << ".{md,csv,json}`)\n\n";
    html << "<h2>" << html_escape(t.title) << "</h2>" << html_table(t);
  }
  md << "## Figures\n\n";
  html << "<h2>Figures</h2>";
  for (const auto& [title, stem] : figures) {
    const std::string svg = join_path(figures_dir, stem + ".svg");
    md << "### " << title << "\n\n![" << title << "](figures/" << stem << ".png)\n\n";
    html << "<h3>" << html_escape(title) << "</h3>";
    if (is_regular_file(svg)) {
      std::string content = read_text(svg);
      const size_t start = content.find("<svg");
      html << (start == std::string::npos ? content : content.substr(start));
    } else {
      html << "<p>(figure not rendered: gnuplot unavailable)</p>";
    }
  }
  md << "## Configuration\n\n```json\n" << m.grid.dump(2) << "\n```\n";
  html << "<h2>Configuration</h2><pre>" << html_escape(m.grid.dump(2)) << "</pre>";
  html << "<p>liondg " << versions.at("liondg") << " (" << versions.at("git_revision") << "), libtorch " << versions.at("libtorch")
       << "</p></body></html>\n";
  result.markdown_path = join_path(dir, "report.md");
  result.html_path = join_path(dir, "report.html");
  write_file_atomic(result.markdown_path, md.str());
  write_file_atomic(result.html_path, html.str());
  result.files.push_back(result.markdown_path);
  result.files.push_back(result.html_path);
  return result;
}

}  // namespace liondg
