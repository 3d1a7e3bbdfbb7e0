#pragma once
// Statistics for comparing initialization methods across seeds. Pure functions on
// std::vector<double>; every degenerate case (n < 2, zero variance, empty input)
// has a stated result instead of a crash or a silent NaN where a value is defined.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace liondg::stats {

/// Arithmetic mean; NaN for an empty sample.
double mean(const std::vector<double>& x);

/// Sample standard deviation (n - 1 denominator); NaN for n < 2.
double sample_std(const std::vector<double>& x);

/// Two-sided confidence interval of the mean from the Student t distribution
/// (mean +- t_{(1+level)/2, n-1} * s / sqrt(n)). n < 2: {NaN, NaN}; s = 0: {mean, mean}.
struct Interval {
  double low;
  double high;
};
/// Throws UsageError for a level outside (0, 1).
Interval mean_confidence_interval(const std::vector<double>& x, double level = 0.95);

/// Speedup in percent of `method` over `baseline` on steps-to-target:
/// 100 * (mean(baseline) - mean(method)) / mean(baseline). NaN if either is empty
/// or mean(baseline) == 0.
double speedup_percent(const std::vector<double>& baseline, const std::vector<double>& method);

/// Welch's unequal-variance t-test of mean(a) - mean(b).
struct WelchResult {
  double t;   // (mean(a) - mean(b)) / sqrt(s_a^2/n_a + s_b^2/n_b)
  double df;  // Welch-Satterthwaite degrees of freedom
  double p;   // two-sided p-value from the Student t CDF
};
/// Conventions: n_a < 2 or n_b < 2 -> all NaN. Both variances 0: equal means ->
/// t = 0, df = NaN, p = 1; different means -> t = +-inf, df = NaN, p = 0.
WelchResult welch_t_test(const std::vector<double>& a, const std::vector<double>& b);

/// Cohen's d of a versus b: (mean(a) - mean(b)) / sqrt((s_a^2 + s_b^2) / 2)
/// (the pooled SD of two groups with equal weight). n < 2 -> NaN; pooled SD 0:
/// equal means -> 0, else +-inf.
double cohens_d(const std::vector<double>& a, const std::vector<double>& b);

/// Hedges' g: Cohen's d with the small-sample correction J = 1 - 3 / (4 (n_a + n_b) - 9),
/// using the (n-1)-weighted pooled SD sqrt(((n_a-1)s_a^2 + (n_b-1)s_b^2) / (n_a+n_b-2)).
/// n < 2 -> NaN; pooled SD 0 as for cohens_d.
double hedges_g(const std::vector<double>& a, const std::vector<double>& b);

/// Holm-Bonferroni step-down adjusted p-values, in the order given. NaN inputs
/// stay NaN and do not count towards the number of hypotheses; a p-value outside
/// [0, 1] throws UsageError.
std::vector<double> holm_adjust(const std::vector<double>& p);

/// Two-sided p-value of a t statistic with `df` degrees of freedom.
double student_t_two_sided_p(double t, double df);

}  // namespace liondg::stats
