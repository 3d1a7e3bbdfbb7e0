// Tests of liondg::stats: every function against reference values from scipy/numpy
// (tests/golden/stats.json, written by scripts/golden_stats.py), then each documented
// degenerate convention and the Holm adjustment's properties checked directly.

#include <liondg/errors.h>
#include <liondg/stats/stats.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <fstream>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace liondg {
namespace {

using nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kPi = 3.14159265358979323846;
/// Relative tolerance for closed forms (means, SDs, t, df, effect sizes, speedups, CIs).
constexpr double kClosedFormRelTol = 1e-9;
/// Relative tolerance for p-values (Boost.Math versus scipy's cephes t distribution).
constexpr double kPValueRelTol = 1e-7;
/// Tolerance for confidence-interval bounds, relative to the larger of the bound and the
/// half-width. scipy 1.10's t quantile (cephes stdtri) is off by up to ~2e-9 relative
/// (measured against mpmath at 40 digits; Boost.Math agrees with mpmath to ~1e-16), so
/// the closed-form 1e-9 would test scipy's error, not ours.
constexpr double kQuantileRelTol = 1e-8;
/// Relative tolerance for checks against exact closed forms computed in this file.
constexpr double kExactRelTol = 1e-12;
/// Absolute tolerance for exact values of order 1 (hand-computed Welch t and df, Holm values).
constexpr double kExactAbsTol = 1e-12;
/// Absolute tolerance where the reference value is exactly 0.
constexpr double kZeroAbsTol = 1e-12;
/// The golden file must hold at least this many cases of each kind (guards against an
/// empty or truncated file silently passing the loops below).
constexpr std::size_t kMinGoldenSamples = 20;
constexpr std::size_t kMinGoldenPairs = 20;
constexpr std::size_t kMinGoldenHolm = 8;
constexpr std::size_t kMinGoldenTP = 12;

/// tests/golden/stats.json, found next to this source file.
const json& golden() {
  static const json doc = [] {
    std::string here = __FILE__;
    const auto slash = here.find_last_of('/');
    const std::string dir = slash == std::string::npos ? std::string(".") : here.substr(0, slash);
    const std::string path = dir + "/golden/stats.json";
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path + " (run scripts/golden_stats.py)");
    return json::parse(in);
  }();
  return doc;
}

/// A JSON number, or the golden file's encodings: null = NaN, "inf" / "-inf".
double number(const json& v) {
  if (v.is_null()) return kNaN;
  if (v.is_string()) {
    const auto s = v.get<std::string>();
    if (s == "inf") return kInf;
    if (s == "-inf") return -kInf;
    throw std::runtime_error("unexpected string in golden file: " + s);
  }
  return v.get<double>();
}

std::vector<double> numbers(const json& v) {
  std::vector<double> out;
  for (const auto& e : v) out.push_back(number(e));
  return out;
}

/// Expects `actual` to match the reference: NaN for NaN, the same infinity, or within
/// `rel_tol` relative (kZeroAbsTol absolute where the reference is 0).
void expect_matches(double actual, double expected, double rel_tol, const std::string& what) {
  if (std::isnan(expected)) {
    EXPECT_TRUE(std::isnan(actual)) << what << ": expected NaN, got " << actual;
  } else if (std::isinf(expected)) {
    EXPECT_EQ(actual, expected) << what;
  } else {
    const double tol = expected == 0.0 ? kZeroAbsTol : rel_tol * std::fabs(expected);
    EXPECT_NEAR(actual, expected, tol) << what;
  }
}

void expect_matches(double actual, const json& expected, double rel_tol, const std::string& what) {
  expect_matches(actual, number(expected), rel_tol, what);
}

// ---------------------------------------------------------------- golden values

TEST(StatsGolden, FileDescribesItsReferences) {
  const json& g = golden();
  EXPECT_EQ(g.at("generator").get<std::string>(), "scripts/golden_stats.py");
  EXPECT_FALSE(g.at("holm_reference").get<std::string>().empty());
  EXPECT_GE(g.at("samples").size(), kMinGoldenSamples);
  EXPECT_GE(g.at("pairs").size(), kMinGoldenPairs);
  EXPECT_GE(g.at("holm").size(), kMinGoldenHolm);
  EXPECT_GE(g.at("student_t_two_sided_p").size(), kMinGoldenTP);
}

TEST(StatsGolden, MeanSampleStdAndConfidenceIntervals) {
  const json& samples = golden().at("samples");
  ASSERT_GE(samples.size(), kMinGoldenSamples);
  for (const auto& c : samples) {
    const std::string name = c.at("name").get<std::string>();
    const std::vector<double> x = numbers(c.at("x"));
    expect_matches(stats::mean(x), c.at("mean"), kClosedFormRelTol, name + " mean");
    expect_matches(stats::sample_std(x), c.at("std"), kClosedFormRelTol, name + " std");
    ASSERT_FALSE(c.at("ci").empty()) << name;
    for (const auto& ci : c.at("ci")) {
      const double level = ci.at("level").get<double>();
      const stats::Interval got = stats::mean_confidence_interval(x, level);
      const std::string what = name + " CI level " + std::to_string(level);
      const double low = number(ci.at("low"));
      const double high = number(ci.at("high"));
      if (std::isfinite(low) && std::isfinite(high) && low < high) {
        const double half_width = (high - low) / 2.0;
        EXPECT_NEAR(got.low, low, kQuantileRelTol * std::max(std::fabs(low), half_width)) << what << " low";
        EXPECT_NEAR(got.high, high, kQuantileRelTol * std::max(std::fabs(high), half_width)) << what << " high";
      } else {  // NaN (n < 2) or a point interval (s = 0): exact conventions
        expect_matches(got.low, low, kClosedFormRelTol, what + " low");
        expect_matches(got.high, high, kClosedFormRelTol, what + " high");
      }
    }
  }
}

TEST(StatsGolden, WelchEffectSizesAndSpeedup) {
  const json& pairs = golden().at("pairs");
  ASSERT_GE(pairs.size(), kMinGoldenPairs);
  for (const auto& c : pairs) {
    const std::string name = c.at("name").get<std::string>();
    const std::vector<double> a = numbers(c.at("a"));
    const std::vector<double> b = numbers(c.at("b"));
    const stats::WelchResult w = stats::welch_t_test(a, b);
    expect_matches(w.t, c.at("welch").at("t"), kClosedFormRelTol, name + " Welch t");
    expect_matches(w.df, c.at("welch").at("df"), kClosedFormRelTol, name + " Welch df");
    expect_matches(w.p, c.at("welch").at("p"), kPValueRelTol, name + " Welch p");
    expect_matches(stats::cohens_d(a, b), c.at("cohens_d"), kClosedFormRelTol, name + " Cohen's d");
    expect_matches(stats::hedges_g(a, b), c.at("hedges_g"), kClosedFormRelTol, name + " Hedges' g");
    expect_matches(stats::speedup_percent(a, b), c.at("speedup_percent"), kClosedFormRelTol, name + " speedup");
  }
}

TEST(StatsGolden, HolmAdjust) {
  const json& cases = golden().at("holm");
  ASSERT_GE(cases.size(), kMinGoldenHolm);
  for (const auto& c : cases) {
    const std::string name = c.at("name").get<std::string>();
    const std::vector<double> p = numbers(c.at("p"));
    const std::vector<double> expected = numbers(c.at("adjusted"));
    const std::vector<double> got = stats::holm_adjust(p);
    ASSERT_EQ(got.size(), expected.size()) << name;
    for (std::size_t i = 0; i < got.size(); ++i) {
      expect_matches(got[i], expected[i], kClosedFormRelTol, name + " [" + std::to_string(i) + "]");
    }
  }
}

TEST(StatsGolden, StudentTTwoSidedP) {
  const json& cases = golden().at("student_t_two_sided_p");
  ASSERT_GE(cases.size(), kMinGoldenTP);
  for (const auto& c : cases) {
    const double t = number(c.at("t"));
    const double df = number(c.at("df"));
    expect_matches(stats::student_t_two_sided_p(t, df), c.at("p"), kPValueRelTol,
                   "t = " + std::to_string(t) + ", df = " + std::to_string(df));
  }
}

// ---------------------------------------------------------------- mean, SD, CI

TEST(StatsMean, ValueAndEmptyIsNaN) {
  EXPECT_DOUBLE_EQ(stats::mean({1.0, 2.0, 6.0}), 3.0);
  EXPECT_DOUBLE_EQ(stats::mean({-4.5}), -4.5);
  EXPECT_TRUE(std::isnan(stats::mean({})));
}

TEST(StatsSampleStd, UsesNMinusOneAndNBelowTwoIsNaN) {
  // [1, 3]: mean 2, squared deviations 1 + 1, / (n - 1) = 2.
  EXPECT_DOUBLE_EQ(stats::sample_std({1.0, 3.0}), std::sqrt(2.0));
  EXPECT_TRUE(std::isnan(stats::sample_std({})));
  EXPECT_TRUE(std::isnan(stats::sample_std({7.0})));
}

TEST(StatsSampleStd, ConstantSampleIsExactlyZero) {
  EXPECT_EQ(stats::sample_std({5.0, 5.0, 5.0}), 0.0);
  // 0.1 is not representable and the mean of three copies rounds away from it; the
  // standard deviation must still be exactly 0, not ~1e-17.
  EXPECT_EQ(stats::sample_std({0.1, 0.1, 0.1}), 0.0);
  EXPECT_EQ(stats::sample_std({0.7, 0.7, 0.7, 0.7}), 0.0);
}

TEST(StatsConfidenceInterval, KnownValueForTwoPoints) {
  // [0, 2]: mean 1, s = sqrt(2), n = 2 -> half-width t_{0.975, 1} * s / sqrt(2) = t_{0.975, 1}
  // = tan(pi * (0.975 - 0.5)) (the Cauchy quantile).
  const double t975 = std::tan(kPi * 0.475);
  const stats::Interval ci = stats::mean_confidence_interval({0.0, 2.0}, 0.95);
  EXPECT_NEAR(ci.low, 1.0 - t975, kExactRelTol * t975);
  EXPECT_NEAR(ci.high, 1.0 + t975, kExactRelTol * t975);
}

TEST(StatsConfidenceInterval, KnownValueForThreePoints) {
  // [0, 1, 2]: mean 1, s = 1, df = 2, where t_{q, 2} = (2q - 1) / sqrt(2 q (1 - q)).
  for (double level : {0.90, 0.95, 0.99}) {
    const double q = (1.0 + level) / 2.0;
    const double half_width = (2.0 * q - 1.0) / std::sqrt(2.0 * q * (1.0 - q)) / std::sqrt(3.0);
    const stats::Interval ci = stats::mean_confidence_interval({0.0, 1.0, 2.0}, level);
    EXPECT_NEAR(ci.low, 1.0 - half_width, kExactRelTol * half_width) << level;
    EXPECT_NEAR(ci.high, 1.0 + half_width, kExactRelTol * half_width) << level;
  }
}

TEST(StatsConfidenceInterval, SymmetricAndWiderAtHigherLevel) {
  const std::vector<double> x{820.0, 760.0, 905.0};
  const double m = stats::mean(x);
  const stats::Interval c90 = stats::mean_confidence_interval(x, 0.90);
  const stats::Interval c95 = stats::mean_confidence_interval(x);  // default level 0.95
  const stats::Interval c99 = stats::mean_confidence_interval(x, 0.99);
  EXPECT_NEAR(m - c95.low, c95.high - m, kExactRelTol * m);
  EXPECT_LT(c95.low, m);
  EXPECT_LT(c99.low, c95.low);
  EXPECT_LT(c95.low, c90.low);
  EXPECT_GT(c99.high, c95.high);
  EXPECT_GT(c95.high, c90.high);
}

TEST(StatsConfidenceInterval, NBelowTwoIsNaN) {
  for (const std::vector<double>& x : {std::vector<double>{}, std::vector<double>{3.0}}) {
    const stats::Interval ci = stats::mean_confidence_interval(x);
    EXPECT_TRUE(std::isnan(ci.low)) << x.size();
    EXPECT_TRUE(std::isnan(ci.high)) << x.size();
  }
}

TEST(StatsConfidenceInterval, ZeroVarianceIsThePointMean) {
  for (const std::vector<double>& x : {std::vector<double>{4.0, 4.0}, std::vector<double>{0.1, 0.1, 0.1}}) {
    const stats::Interval ci = stats::mean_confidence_interval(x, 0.99);
    EXPECT_EQ(ci.low, stats::mean(x));
    EXPECT_EQ(ci.high, stats::mean(x));
  }
}

TEST(StatsConfidenceInterval, LevelOutsideOpenUnitIntervalIsAUsageError) {
  const std::vector<double> x{1.0, 2.0, 3.0};
  for (double level : {0.0, 1.0, -0.5, 1.5, kNaN}) {
    EXPECT_THROW(stats::mean_confidence_interval(x, level), UsageError) << level;
  }
}

// ---------------------------------------------------------------- speedup

TEST(StatsSpeedup, ValueSignAndDegenerateCases) {
  // Baseline mean 800, method mean 600: 25 % fewer steps.
  EXPECT_DOUBLE_EQ(stats::speedup_percent({800.0, 790.0, 810.0}, {600.0, 610.0, 590.0}), 25.0);
  EXPECT_DOUBLE_EQ(stats::speedup_percent({100.0}, {150.0}), -50.0);  // slower -> negative
  EXPECT_TRUE(std::isnan(stats::speedup_percent({}, {1.0})));
  EXPECT_TRUE(std::isnan(stats::speedup_percent({1.0}, {})));
  EXPECT_TRUE(std::isnan(stats::speedup_percent({-1.0, 1.0}, {2.0})));  // mean(baseline) == 0
}

// ---------------------------------------------------------------- Welch

TEST(StatsWelch, KnownValueAndPConsistentWithTDistribution) {
  // a = [1, 2, 3], b = [4, 6, 8]: variances 1 and 4, standard errors^2 1/3 and 4/3,
  // t = -4 / sqrt(5/3), df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17.
  const stats::WelchResult w = stats::welch_t_test({1.0, 2.0, 3.0}, {4.0, 6.0, 8.0});
  EXPECT_NEAR(w.t, -4.0 / std::sqrt(5.0 / 3.0), kExactAbsTol);
  EXPECT_NEAR(w.df, 50.0 / 17.0, kExactAbsTol);
  EXPECT_DOUBLE_EQ(w.p, stats::student_t_two_sided_p(w.t, w.df));
  EXPECT_GT(w.p, 0.0);
  EXPECT_LT(w.p, 1.0);
}

TEST(StatsWelch, SwappingSamplesNegatesT) {
  const std::vector<double> a{820.0, 760.0, 905.0};
  const std::vector<double> b{610.0, 655.0, 590.0, 640.0};
  const stats::WelchResult ab = stats::welch_t_test(a, b);
  const stats::WelchResult ba = stats::welch_t_test(b, a);
  EXPECT_GT(ab.t, 0.0);
  EXPECT_DOUBLE_EQ(ba.t, -ab.t);
  EXPECT_DOUBLE_EQ(ba.df, ab.df);
  EXPECT_DOUBLE_EQ(ba.p, ab.p);
}

TEST(StatsWelch, NBelowTwoIsAllNaN) {
  const std::vector<double> three{1.0, 2.0, 3.0};
  for (const auto& [a, b] : {std::pair{std::vector<double>{5.0}, three}, std::pair{three, std::vector<double>{5.0}},
                             std::pair{std::vector<double>{}, three}, std::pair{std::vector<double>{1.0}, std::vector<double>{2.0}}}) {
    const stats::WelchResult w = stats::welch_t_test(a, b);
    EXPECT_TRUE(std::isnan(w.t)) << a.size() << " vs " << b.size();
    EXPECT_TRUE(std::isnan(w.df)) << a.size() << " vs " << b.size();
    EXPECT_TRUE(std::isnan(w.p)) << a.size() << " vs " << b.size();
  }
}

TEST(StatsWelch, BothVariancesZeroEqualMeans) {
  const stats::WelchResult w = stats::welch_t_test({5.0, 5.0, 5.0}, {5.0, 5.0});
  EXPECT_EQ(w.t, 0.0);
  EXPECT_TRUE(std::isnan(w.df));
  EXPECT_EQ(w.p, 1.0);
}

TEST(StatsWelch, BothVariancesZeroDifferentMeans) {
  const stats::WelchResult up = stats::welch_t_test({7.0, 7.0}, {5.0, 5.0, 5.0});
  EXPECT_EQ(up.t, kInf);
  EXPECT_TRUE(std::isnan(up.df));
  EXPECT_EQ(up.p, 0.0);
  const stats::WelchResult down = stats::welch_t_test({0.1, 0.1, 0.1}, {0.2, 0.2, 0.2});
  EXPECT_EQ(down.t, -kInf);
  EXPECT_TRUE(std::isnan(down.df));
  EXPECT_EQ(down.p, 0.0);
}

TEST(StatsWelch, OneVarianceZeroIsFinite) {
  // b constant: t = (650 - 700) / sqrt(100 / 3), df = n_a - 1 = 2.
  const stats::WelchResult w = stats::welch_t_test({650.0, 640.0, 660.0}, {700.0, 700.0, 700.0});
  EXPECT_NEAR(w.t, -50.0 / std::sqrt(100.0 / 3.0), kExactAbsTol);
  EXPECT_NEAR(w.df, 2.0, kExactAbsTol);
  EXPECT_TRUE(std::isfinite(w.p));
}

// ---------------------------------------------------------------- effect sizes

TEST(StatsEffectSize, CohensDKnownValue) {
  // Variances 1 and 4 -> pooled SD sqrt(2.5); difference -4.
  EXPECT_NEAR(stats::cohens_d({1.0, 2.0, 3.0}, {4.0, 6.0, 8.0}), -4.0 / std::sqrt(2.5), kExactAbsTol);
}

TEST(StatsEffectSize, HedgesGKnownValueWithUnequalSizes) {
  // a = [1, 2, 3] (var 1), b = [4, 6, 8, 10, 12] (var 10): pooled SD sqrt((2 + 40) / 6) = sqrt(7),
  // difference 2 - 8 = -6, J = 1 - 3 / (4 * 8 - 9) = 20 / 23.
  EXPECT_NEAR(stats::hedges_g({1.0, 2.0, 3.0}, {4.0, 6.0, 8.0, 10.0, 12.0}), (20.0 / 23.0) * -6.0 / std::sqrt(7.0),
              kExactAbsTol);
}

TEST(StatsEffectSize, HedgesGIsCorrectedCohensDForEqualSizes) {
  // With n_a = n_b both pooled SDs coincide, so g = J d with J = 1 - 3 / (4 * 6 - 9) = 0.8.
  const std::vector<double> a{0.712, 0.705, 0.721};
  const std::vector<double> b{0.718, 0.709, 0.715};
  const double d = stats::cohens_d(a, b);
  EXPECT_NE(d, 0.0);
  EXPECT_NEAR(stats::hedges_g(a, b), 0.8 * d, kExactRelTol * std::fabs(d));
}

TEST(StatsEffectSize, NBelowTwoIsNaN) {
  const std::vector<double> three{1.0, 2.0, 3.0};
  EXPECT_TRUE(std::isnan(stats::cohens_d({1.0}, three)));
  EXPECT_TRUE(std::isnan(stats::cohens_d(three, {})));
  EXPECT_TRUE(std::isnan(stats::hedges_g({1.0}, three)));
  EXPECT_TRUE(std::isnan(stats::hedges_g(three, {})));
}

TEST(StatsEffectSize, ZeroPooledSdIsZeroOrSignedInfinity) {
  EXPECT_EQ(stats::cohens_d({5.0, 5.0}, {5.0, 5.0, 5.0}), 0.0);
  EXPECT_EQ(stats::hedges_g({5.0, 5.0}, {5.0, 5.0, 5.0}), 0.0);
  EXPECT_EQ(stats::cohens_d({7.0, 7.0}, {5.0, 5.0, 5.0}), kInf);
  EXPECT_EQ(stats::hedges_g({7.0, 7.0}, {5.0, 5.0, 5.0}), kInf);
  EXPECT_EQ(stats::cohens_d({0.1, 0.1, 0.1}, {0.2, 0.2}), -kInf);
  EXPECT_EQ(stats::hedges_g({0.1, 0.1, 0.1}, {0.2, 0.2}), -kInf);
}

// ---------------------------------------------------------------- Holm

TEST(StatsHolm, KnownValuesInInputOrder) {
  // Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 -> max(0.06, 0.04) = 0.06.
  const std::vector<double> got = stats::holm_adjust({0.01, 0.04, 0.03, 0.005});
  const std::vector<double> expected{0.03, 0.06, 0.06, 0.02};
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], kExactAbsTol) << i;
}

TEST(StatsHolm, PermutingInputsPermutesOutputs) {
  const std::vector<double> p{0.001, 0.2, 0.013, 0.04, 0.5, 0.0004, 0.03, 0.9, 0.007, 0.06};
  const std::vector<double> adjusted = stats::holm_adjust(p);
  std::vector<std::size_t> perm(p.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::reverse(perm.begin(), perm.end());
  std::rotate(perm.begin(), perm.begin() + 3, perm.end());
  std::vector<double> permuted;
  for (std::size_t i : perm) permuted.push_back(p[i]);
  const std::vector<double> adjusted_permuted = stats::holm_adjust(permuted);
  ASSERT_EQ(adjusted_permuted.size(), p.size());
  for (std::size_t k = 0; k < perm.size(); ++k) EXPECT_EQ(adjusted_permuted[k], adjusted[perm[k]]) << k;
}

TEST(StatsHolm, MonotoneInPBoundedByRawAndOne) {
  const std::vector<double> p{0.04, 0.01, 0.03, 0.2, 0.011, 0.5, 0.012};
  const std::vector<double> adjusted = stats::holm_adjust(p);
  ASSERT_EQ(adjusted.size(), p.size());
  std::vector<std::size_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&p](std::size_t i, std::size_t j) { return p[i] < p[j]; });
  for (std::size_t k = 0; k < order.size(); ++k) {
    const std::size_t i = order[k];
    EXPECT_GE(adjusted[i], p[i]) << i;
    EXPECT_LE(adjusted[i], 1.0) << i;
    if (k > 0) {
      EXPECT_GE(adjusted[i], adjusted[order[k - 1]]) << i;
    }
  }
  // The step-down maximum matters here: 0.011 * 6 = 0.066 is raised to 0.01 * 7 = 0.07.
  EXPECT_NEAR(adjusted[4], 0.07, kExactAbsTol);
  EXPECT_NEAR(adjusted[6], 0.07, kExactAbsTol);  // 0.012 * 5 = 0.06, raised likewise
}

TEST(StatsHolm, CappedAtOne) {
  for (double v : stats::holm_adjust({0.5, 0.6, 0.9})) EXPECT_EQ(v, 1.0);
}

TEST(StatsHolm, NaNStaysNaNAndDoesNotCount) {
  const std::vector<double> with_nan = stats::holm_adjust({0.02, kNaN, 0.01, kNaN, 0.04});
  const std::vector<double> without = stats::holm_adjust({0.02, 0.01, 0.04});  // m = 3, not 5
  ASSERT_EQ(with_nan.size(), 5u);
  EXPECT_TRUE(std::isnan(with_nan[1]));
  EXPECT_TRUE(std::isnan(with_nan[3]));
  EXPECT_EQ(with_nan[0], without[0]);
  EXPECT_EQ(with_nan[2], without[1]);
  EXPECT_EQ(with_nan[4], without[2]);
  EXPECT_NEAR(with_nan[2], 0.03, kExactAbsTol);  // 0.01 * 3, not * 5
  for (double v : stats::holm_adjust({kNaN, kNaN})) EXPECT_TRUE(std::isnan(v));
}

TEST(StatsHolm, EmptyAndSingle) {
  EXPECT_TRUE(stats::holm_adjust({}).empty());
  const std::vector<double> one = stats::holm_adjust({0.03});
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0], 0.03);
}

TEST(StatsHolm, PValueOutsideUnitIntervalIsAUsageError) {
  EXPECT_THROW(stats::holm_adjust({0.01, 1.5}), UsageError);
  EXPECT_THROW(stats::holm_adjust({-0.01}), UsageError);
  EXPECT_THROW(stats::holm_adjust({kInf}), UsageError);
}

// ---------------------------------------------------------------- t distribution

TEST(StatsStudentT, ClosedFormsForOneAndTwoDegreesOfFreedom) {
  for (double t : {0.3, 1.0, 2.5, 12.0, -4.0}) {
    const double a = std::fabs(t);
    // df = 1 (Cauchy): p = 1 - (2 / pi) atan|t|; df = 2: p = 1 - |t| / sqrt(t^2 + 2).
    const double p1 = 1.0 - 2.0 / kPi * std::atan(a);
    const double p2 = 1.0 - a / std::sqrt(t * t + 2.0);
    EXPECT_NEAR(stats::student_t_two_sided_p(t, 1.0), p1, kExactRelTol * p1) << t;
    EXPECT_NEAR(stats::student_t_two_sided_p(t, 2.0), p2, kExactRelTol * p2) << t;
  }
}

TEST(StatsStudentT, SymmetricAndOneAtZero) {
  EXPECT_EQ(stats::student_t_two_sided_p(0.0, 3.0), 1.0);
  EXPECT_EQ(stats::student_t_two_sided_p(2.2, 7.5), stats::student_t_two_sided_p(-2.2, 7.5));
  EXPECT_LT(stats::student_t_two_sided_p(3.0, 5.0), stats::student_t_two_sided_p(2.0, 5.0));
}

TEST(StatsStudentT, InfiniteDfIsStandardNormal) {
  // 2 * (1 - Phi(1.959963984540054)) = 0.05.
  EXPECT_NEAR(stats::student_t_two_sided_p(1.959963984540054, kInf), 0.05, kExactAbsTol);
}

TEST(StatsStudentT, DegenerateArguments) {
  EXPECT_EQ(stats::student_t_two_sided_p(kInf, 4.0), 0.0);
  EXPECT_EQ(stats::student_t_two_sided_p(-kInf, 4.0), 0.0);
  EXPECT_TRUE(std::isnan(stats::student_t_two_sided_p(kNaN, 4.0)));
  EXPECT_TRUE(std::isnan(stats::student_t_two_sided_p(2.0, kNaN)));
  EXPECT_TRUE(std::isnan(stats::student_t_two_sided_p(2.0, 0.0)));
  EXPECT_TRUE(std::isnan(stats::student_t_two_sided_p(2.0, -3.0)));
}

}  // namespace
}  // namespace liondg
