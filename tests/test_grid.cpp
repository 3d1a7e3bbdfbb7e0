// Grids: specification parsing, sharding, resume after a kill, and the report's
// tables and figures against the results file.

#include "fixtures.h"

#include <liondg/errors.h>
#include <liondg/experiment/grid.h>
#include <liondg/report/report.h>
#include <liondg/stats/stats.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <sys/stat.h>

#ifndef LIONDG_CLI_PATH
#define LIONDG_CLI_PATH ""
#endif

namespace liondg {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

int64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

TEST(Grid, PaperPresetHasTheFullProtocol) {
  const auto cells = expand_grid(grid_preset("paper"));
  EXPECT_EQ(cells.size(), 2u * 2u * 7u * 3u);
  std::set<std::string> keys;
  for (const auto& c : cells) {
    keys.insert(c.key);
    EXPECT_EQ(c.config.train.steps(), 3000);
    EXPECT_EQ(c.config.train.batch_size(), 128);
    EXPECT_DOUBLE_EQ(c.config.train.target_acc(), 0.70);
    EXPECT_DOUBLE_EQ(c.config.train.lr(), 1e-3);
    EXPECT_DOUBLE_EQ(c.config.train.weight_decay(), 0.05);
  }
  EXPECT_EQ(keys.size(), cells.size());
  EXPECT_TRUE(keys.count("cifar100__resnet-ds__gradinit__s456"));
}

TEST(Grid, ShardsAreDisjointAndCoverTheGrid) {
  const auto cells = expand_grid(grid_preset("paper"));
  for (int64_t n : {1, 2, 5, 7, 200}) {
    std::multiset<std::string> seen;
    for (int64_t i = 0; i < n; ++i) {
      for (const auto& c : shard_cells(cells, i, n)) seen.insert(c.key);
    }
    EXPECT_EQ(seen.size(), cells.size()) << n << " shards";
    for (const auto& c : cells) EXPECT_EQ(seen.count(c.key), 1u) << c.key;
  }
  EXPECT_EQ(parse_shard("3/8"), std::make_pair(int64_t{2}, int64_t{8}));
  for (const std::string bad : {"0/4", "5/4", "1", "a/b", "1/0", "2/3x"}) EXPECT_THROW(parse_shard(bad), UsageError) << bad;
}

TEST(Grid, TomlConfigSweepAndErrorsWithLineNumbers) {
  testing::TempDir dir;
  std::ofstream(dir.file("ok.toml")) << "name = \"t\"\ndatasets = [\"synthetic\"]\nmodels = [\"resnet-ds\"]\n"
                                        "inits = [\"he\", \"lion-dg\"]\nseeds = [1, 2, 3]\n"
                                        "[train]\nsteps = 7\n[sweep]\naux_weight = [0.1, 0.3]\n";
  const auto cells = expand_grid(grid_from_toml_file(dir.file("ok.toml")));
  ASSERT_EQ(cells.size(), 2u * 2u * 3u);
  EXPECT_EQ(cells[0].config.train.steps(), 7);
  EXPECT_NE(cells[0].key.find("aux_weight=0.1"), std::string::npos);
  EXPECT_DOUBLE_EQ(cells[0].config.train.aux_weight(), 0.1);
  EXPECT_DOUBLE_EQ(cells[3].config.train.aux_weight(), 0.3);

  std::ofstream(dir.file("syntax.toml")) << "name = \"t\"\ndatasets = [\"synthetic\"\nmodels = 3\n";
  try {
    grid_from_toml_file(dir.file("syntax.toml"));
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("line 3"), std::string::npos) << e.what();
  }
  std::ofstream(dir.file("key.toml")) << "datasets = [\"synthetic\"]\nmodels = [\"resnet-ds\"]\ninits = [\"he\"]\n"
                                         "seeds = [1]\n[train]\nstepz = 4\n";
  try {
    grid_from_toml_file(dir.file("key.toml"));
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("train.stepz"), std::string::npos) << e.what();
  }
  EXPECT_THROW(grid_from_json(R"({"datasets":["x"],"models":["resnet-ds"],"inits":["he"],"seeds":[1]})", "t"), UsageError);
  // bf16 reaches every cell; a configuration whose model refuses bf16 is refused up
  // front, with the model's reason.
  const auto bf16_cells = expand_grid(
      grid_from_json(R"({"datasets":["synthetic"],"models":["densenet-ds"],"inits":["he"],"seeds":[1],)"
                     R"("train":{"bf16":true}})", "t"));
  ASSERT_EQ(bf16_cells.size(), 1u);
  EXPECT_TRUE(bf16_cells[0].config.train.bf16());
  struct Refused {
    std::string models, inits, model_section;  // JSON fragments
    std::vector<std::string> parts;            // in the message
  };
  const std::vector<Refused> refused{
      {R"(["densenet-ds","resnet-ds"])", R"(["he"])", "{}",
       {"train.bf16 with model 'resnet-ds' and init 'he'", "no bfloat16 path"}},
      {R"(["densenet-ds"])", R"(["he","rezero"])", "{}", {"model 'densenet-ds' and init 'rezero'", "rezero blocks"}},
      {R"(["densenet-ds"])", R"(["he"])", R"({"batch_norm":false})", {"train.bf16", "batch_norm off"}},
      // The widest block, from the options: block 3 has 500 + 6 x 100 = 1100 channels.
      {R"(["densenet-ds"])", R"(["he"])", R"({"growth_rate":100})", {"train.bf16", "widest block 1100"}},
      // Without building the model, whose layers would need tens of GB (block 3: 20000 +
      // 6 x 4000 channels).
      {R"(["densenet-ds"])", R"(["he"])", R"({"growth_rate":4000})", {"train.bf16", "widest block 44000"}},
      // Sizes whose arithmetic would overflow int64 are refused by their value.
      {R"(["densenet-ds"])", R"(["he"])", R"({"growth_rate":4611686018427387904})",
       {"model 'densenet-ds' with init 'he'", "growth_rate must be in [1, 1048576], got 4611686018427387904"}},
      // A model that cannot be built at all is named as such, not as a bf16 problem.
      {R"(["densenet-ds"])", R"(["he"])", R"({"block_layers":[6,0,6]})",
       {"model 'densenet-ds' with init 'he'", "block 2 must have > 0 layers"}},
  };
  for (const Refused& r : refused) {
    const std::string json = R"({"datasets":["synthetic"],"models":)" + r.models + R"(,"inits":)" + r.inits +
                             R"(,"seeds":[1],"train":{"bf16":true},"model":)" + r.model_section + "}";
    try {
      grid_from_json(json, "t");
      ADD_FAILURE() << "accepted: " << json;
    } catch (const UsageError& e) {
      for (const auto& part : r.parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(grid_from_json(R"({"datasets":["synthetic"],"models":["resnet-ds"],"inits":["he"],"seeds":[-1]})", "t"),
               UsageError);
}

TEST(Grid, ResultsIgnoreATornLastLine) {
  testing::TempDir dir;
  const std::string path = dir.file("results.jsonl");
  append_result(path, R"({"key":"a","status":"completed"})");
  std::ofstream(path, std::ios::app) << R"({"key":"b","stat)";  // killed mid-write
  EXPECT_EQ(read_results(path).size(), 1u);
  append_result(path, R"({"key":"c","status":"diverged"})");  // starts on a fresh line
  const auto r = read_results(path);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1].key, "c");
}

// Shards merged: finished beats failed, the first input wins among finished
// results, missing cells are counted, run directories are copied, and a different
// grid is refused. Result lines are written by hand (no training needed).
TEST(Grid, MergeShardsOfOneGridAndRefuseAnother) {
  testing::TempDir a, b, c, out;
  const GridSpec spec = grid_preset("smoke");
  const std::vector<GridCell> cells = expand_grid(spec);
  ASSERT_GE(cells.size(), 3u);
  for (const auto* dir : {&a, &b}) write_file_atomic(dir->file("grid.json"), spec.json + "\n");
  auto line = [](const GridCell& cell, const std::string& status, const std::string& tag) {
    return nlohmann::json{{"key", cell.key}, {"status", status}, {"run_dir", cell.config.out_dir}, {"tag", tag}}.dump();
  };
  // a: cell 0 completed, cell 1 failed; b: cell 1 completed, cell 0 completed again.
  append_result(a.file("results.jsonl"), line(cells[0], "completed", "a"));
  append_result(a.file("results.jsonl"), line(cells[1], "failed", "a"));
  append_result(b.file("results.jsonl"), line(cells[1], "completed", "b"));
  append_result(b.file("results.jsonl"), line(cells[0], "completed", "b"));
  ASSERT_TRUE(make_directories(a.file(cells[0].config.out_dir)));
  write_file_atomic(a.file(cells[0].config.out_dir + "/summary.json"), "{\"from\": \"a\"}\n");

  const std::string merged = out.file("merged");
  const MergeSummary m = merge_grids({a.path(), b.path()}, merged);
  EXPECT_EQ(m.cells, static_cast<int64_t>(cells.size()));
  EXPECT_EQ(m.finished, 2);
  EXPECT_EQ(m.failed, 0);
  EXPECT_EQ(m.missing, static_cast<int64_t>(cells.size()) - 2);
  EXPECT_EQ(m.duplicates, 1);
  const auto results = read_results(merged + "/results.jsonl");
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].key, cells[0].key);  // grid order
  EXPECT_NE(results[0].json.find("\"tag\":\"a\""), std::string::npos);  // the first input wins
  EXPECT_NE(results[1].json.find("\"tag\":\"b\""), std::string::npos);  // finished beats failed
  EXPECT_TRUE(is_regular_file(merged + "/" + cells[0].config.out_dir + "/summary.json"));
  EXPECT_TRUE(is_regular_file(merged + "/grid.json"));

  // Another grid, a non-empty output and an input as output are refused.
  write_file_atomic(c.file("grid.json"), grid_preset("quick").json + "\n");
  try {
    merge_grids({a.path(), c.path()}, out.file("other"));
    ADD_FAILURE() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("describes a different grid"), std::string::npos) << e.what();
  }
  EXPECT_THROW(merge_grids({a.path(), b.path()}, merged), UsageError);
  EXPECT_THROW(merge_grids({a.path(), b.path()}, a.path()), UsageError);
  EXPECT_THROW(merge_grids({out.file("nope")}, out.file("x")), DataError);
}

// Grid runs need the command-line tool (worker processes).
#define REQUIRE_CLI() \
  if (std::string(LIONDG_CLI_PATH).empty()) GTEST_SKIP() << "built without the command-line tool"

GridOptions smoke_options(const std::string& out) {
  GridOptions o;
  o.out_dir = out;
  o.jobs = 2;
  o.quiet = true;
  o.worker_binary = LIONDG_CLI_PATH;
  return o;
}

TEST(Grid, ResumeAfterAKillRunsOnlyTheRemainingCells) {
  REQUIRE_CLI();
  testing::TempDir dir;
  const std::string out = dir.file("g");
  const GridSpec spec = grid_preset("smoke");
  ASSERT_EQ(run_grid(spec, smoke_options(out)), 0);
  const std::string results = join_path(out, "results.jsonl");
  const auto full = read_results(results);
  ASSERT_EQ(full.size(), 4u);

  // Simulate a kill: keep two finished lines and half of the third.
  std::string text = slurp(results);
  std::vector<std::string> lines;
  for (size_t start = 0, end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
    lines.push_back(text.substr(start, end - start));
  }
  std::ofstream(results, std::ios::trunc) << lines[0] << "\n" << lines[1] << "\n" << lines[2].substr(0, lines[2].size() / 2);
  const auto kept0 = nlohmann::json::parse(lines[0])["key"].get<std::string>();
  const std::string marker = join_path(join_path(out, "runs/" + kept0), "metrics.csv");
  const std::string before = slurp(marker);
  ::unlink(join_path(out, "report.md").c_str());

  ASSERT_EQ(run_grid(spec, smoke_options(out)), 0);
  const auto resumed = read_results(results);
  ASSERT_EQ(resumed.size(), 4u);
  // Exactly two new lines were appended (the torn cell and the one never recorded);
  // the torn fragment stays as an ignored line of its own: 2 + 1 + 2 lines.
  std::string after_text = slurp(results);
  EXPECT_EQ(std::count(after_text.begin(), after_text.end(), '\n'), 5);
  EXPECT_EQ(slurp(marker), before) << "a finished cell was run again";
  for (const auto& r : resumed) EXPECT_EQ(r.status, "completed") << r.key;
  // A different grid in the same directory is refused.
  EXPECT_THROW(run_grid(grid_from_json(R"({"name":"other","datasets":["synthetic"],"models":["resnet-ds"],
                                          "inits":["he"],"seeds":[1]})", "t"), smoke_options(out)),
               UsageError);
}

TEST(Report, SmokeGridTablesAndFiguresMatchTheResults) {
  REQUIRE_CLI();
  testing::TempDir dir;
  const std::string out = dir.file("g");
  ASSERT_EQ(run_grid(grid_preset("smoke"), smoke_options(out)), 0);
  const ReportResult r = write_report(out);
  for (const auto& f : r.files) EXPECT_GT(file_size(f), 0) << f;
  for (const std::string name : {"table1", "table2", "table6", "table7", "significance"}) {
    for (const std::string ext : {"md", "csv", "json"}) {
      EXPECT_GT(file_size(join_path(out, "tables/" + name + "." + ext)), 0) << name << "." << ext;
    }
  }
  for (const std::string fig : {"fig2_val_acc", "steps_to_target", "fig1_accuracy_synthetic___densenet-ds",
                                "fig1_grad_ratio_synthetic___densenet-ds", "aux_weight_norm_synthetic___densenet-ds"}) {
    EXPECT_GT(file_size(join_path(out, "figures/" + fig + ".png")), 1000) << fig;
    EXPECT_GT(file_size(join_path(out, "figures/" + fig + ".svg")), 1000) << fig;
  }
  EXPECT_NE(slurp(r.html_path).find("<svg"), std::string::npos);  // figures inline
  EXPECT_NE(slurp(r.markdown_path).find("Gradient decoupling"), std::string::npos);

  // Table 1's numbers equal the statistics of results.jsonl.
  std::map<std::string, std::vector<double>> acc, steps;
  for (const auto& line : read_results(join_path(out, "results.jsonl"))) {
    const auto j = nlohmann::json::parse(line.json);
    acc[j["init"]].push_back(j["summary"]["val_acc"].get<double>());
    const auto& s = j["summary"]["steps_to_target"];
    steps[j["init"]].push_back(s.is_null() ? 12.0 : s.get<double>());  // budget for non-converged
  }
  const auto table1 = nlohmann::json::parse(slurp(join_path(out, "tables/table1.json")));
  ASSERT_EQ(table1.size(), 2u);
  for (const auto& row : table1) {
    const std::string m = row["method"];
    EXPECT_NEAR(row["val_acc_mean"].get<double>(), stats::mean(acc[m]), 1e-12) << m;
    EXPECT_NEAR(row["steps_mean"].get<double>(), stats::mean(steps[m]), 1e-12) << m;
    if (m == "lion-dg") {
      EXPECT_NEAR(row["speedup_percent"].get<double>(), stats::speedup_percent(steps["he"], steps["lion-dg"]), 1e-9);
    }
  }
  const auto sig = nlohmann::json::parse(slurp(join_path(out, "tables/significance.json")));
  ASSERT_EQ(sig.size(), 2u);
  for (const auto& row : sig) {
    const auto& a = row["metric"] == "val_acc" ? acc["lion-dg"] : steps["lion-dg"];
    const auto& b = row["metric"] == "val_acc" ? acc["he"] : steps["he"];
    const auto w = stats::welch_t_test(a, b);
    if (row["p"].is_number()) {
      EXPECT_NEAR(row["p"].get<double>(), w.p, 1e-12);
    }
  }
  const std::string csv = slurp(join_path(out, "tables/significance.csv"));
  EXPECT_EQ(csv.rfind("dataset,model,method,metric,n_method,n_baseline,mean_method,mean_baseline,t,df,p,cohens_d,hedges_g,p_holm", 0), 0u);
}

}  // namespace
}  // namespace liondg
