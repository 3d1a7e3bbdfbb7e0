#pragma once
// Tables, figures and the report of a grid directory (results.jsonl + run directories).
//
//   DIR/tables/{table1,table2,table6,table7,significance}.{md,csv,json}
//   DIR/figures/*.png and *.svg (gnuplot)
//   DIR/report.md and a self-contained DIR/report.html

#include <string>
#include <vector>

namespace liondg {

struct ReportResult {
  std::string markdown_path;
  std::string html_path;
  std::string table1_markdown;  // for printing at the end of a grid
  std::vector<std::string> files;   // every file written
  std::vector<std::string> notes;   // e.g. figures skipped because gnuplot is missing
};

/// Builds every table, figure and the report from `grid_dir`. Throws DataError if the
/// directory has no results.
ReportResult write_report(const std::string& grid_dir);

}  // namespace liondg
