// Statistics for comparing initialization methods across seeds (see stats.h for every
// convention). The Student t CDF and quantile come from Boost.Math (header-only); all
// other quantities are closed forms. Reference values: scripts/golden_stats.py.

#include <liondg/errors.h>
#include <liondg/stats/stats.h>

#include <boost/math/distributions/normal.hpp>
#include <boost/math/distributions/students_t.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <sstream>
#include <vector>

namespace liondg::stats {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
/// Smallest sample size with a defined sample variance (n - 1 denominator).
constexpr std::size_t kMinSampleForVariance = 2;

// Boost.Math reports out-of-domain arguments as NaN and overflow as +-inf instead of
// throwing; the callers below screen their arguments anyway, so this is a safety net.
using Policy = boost::math::policies::policy<
    boost::math::policies::domain_error<boost::math::policies::ignore_error>,
    boost::math::policies::overflow_error<boost::math::policies::ignore_error>,
    boost::math::policies::pole_error<boost::math::policies::ignore_error>>;
using StudentT = boost::math::students_t_distribution<double, Policy>;
using Normal = boost::math::normal_distribution<double, Policy>;

/// Sample variance (n - 1 denominator) of a sample with n >= 2, two-pass on the values
/// shifted by x[0]: a constant sample gets exactly 0, whatever rounding its mean has
/// (mean([0.1, 0.1, 0.1]) is not exactly 0.1, but its variance is exactly 0).
double sample_variance(const std::vector<double>& x) {
  const double shift = x.front();
  const auto n = static_cast<double>(x.size());
  double sum = 0.0;
  for (double v : x) sum += v - shift;
  const double shifted_mean = sum / n;
  double squares = 0.0;
  for (double v : x) {
    const double d = (v - shift) - shifted_mean;
    squares += d * d;
  }
  return squares / (n - 1.0);
}

/// Result of a difference divided by a zero scale: 0 for equal means, else +-inf.
double zero_scale_ratio(double difference) {
  if (difference == 0.0) return 0.0;
  return difference > 0.0 ? kInf : -kInf;
}

bool has_variance(const std::vector<double>& x) { return x.size() >= kMinSampleForVariance; }

}  // namespace

double mean(const std::vector<double>& x) {
  if (x.empty()) return kNaN;
  return std::accumulate(x.begin(), x.end(), 0.0) / static_cast<double>(x.size());
}

double sample_std(const std::vector<double>& x) {
  if (!has_variance(x)) return kNaN;
  return std::sqrt(sample_variance(x));
}

Interval mean_confidence_interval(const std::vector<double>& x, double level) {
  // An invalid level is a caller's mistake, not a property of the data: it is reported.
  if (!(level > 0.0 && level < 1.0)) {
    std::ostringstream msg;
    msg << "mean_confidence_interval: level must lie in (0, 1), got " << level;
    throw UsageError(msg.str());
  }
  if (!has_variance(x)) return {kNaN, kNaN};
  const double m = mean(x);
  const double s = sample_std(x);
  if (s == 0.0) return {m, m};
  const auto n = static_cast<double>(x.size());
  const double t = boost::math::quantile(StudentT(n - 1.0), (1.0 + level) / 2.0);
  const double half_width = t * s / std::sqrt(n);
  return {m - half_width, m + half_width};
}

double speedup_percent(const std::vector<double>& baseline, const std::vector<double>& method) {
  if (baseline.empty() || method.empty()) return kNaN;
  const double base = mean(baseline);
  if (base == 0.0) return kNaN;
  return 100.0 * (base - mean(method)) / base;
}

WelchResult welch_t_test(const std::vector<double>& a, const std::vector<double>& b) {
  if (!has_variance(a) || !has_variance(b)) return {kNaN, kNaN, kNaN};
  const double difference = mean(a) - mean(b);
  const double na = static_cast<double>(a.size());
  const double nb = static_cast<double>(b.size());
  const double va = sample_variance(a) / na;  // squared standard error of mean(a)
  const double vb = sample_variance(b) / nb;
  if (va == 0.0 && vb == 0.0) {
    // Both samples constant: no spread to scale by (documented convention).
    const double t = zero_scale_ratio(difference);
    return {t, kNaN, difference == 0.0 ? 1.0 : 0.0};
  }
  const double se2 = va + vb;
  const double t = difference / std::sqrt(se2);
  const double df = se2 * se2 / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
  return {t, df, student_t_two_sided_p(t, df)};
}

double cohens_d(const std::vector<double>& a, const std::vector<double>& b) {
  if (!has_variance(a) || !has_variance(b)) return kNaN;
  const double difference = mean(a) - mean(b);
  const double pooled_sd = std::sqrt((sample_variance(a) + sample_variance(b)) / 2.0);
  if (pooled_sd == 0.0) return zero_scale_ratio(difference);
  return difference / pooled_sd;
}

double hedges_g(const std::vector<double>& a, const std::vector<double>& b) {
  if (!has_variance(a) || !has_variance(b)) return kNaN;
  const double na = static_cast<double>(a.size());
  const double nb = static_cast<double>(b.size());
  const double difference = mean(a) - mean(b);
  const double pooled_sd =
      std::sqrt(((na - 1.0) * sample_variance(a) + (nb - 1.0) * sample_variance(b)) / (na + nb - 2.0));
  if (pooled_sd == 0.0) return zero_scale_ratio(difference);
  // Small-sample bias correction; n_a + n_b >= 4 here, so the denominator is >= 7.
  const double correction = 1.0 - 3.0 / (4.0 * (na + nb) - 9.0);
  return correction * difference / pooled_sd;
}

std::vector<double> holm_adjust(const std::vector<double>& p) {
  std::vector<std::size_t> order;  // indices of the non-NaN p-values, ascending by p
  order.reserve(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (std::isnan(p[i])) continue;
    if (p[i] < 0.0 || p[i] > 1.0) {
      std::ostringstream msg;
      msg << "holm_adjust: p-value " << i << " is " << p[i] << ", outside [0, 1]";
      throw UsageError(msg.str());
    }
    order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&p](std::size_t i, std::size_t j) { return p[i] < p[j]; });

  std::vector<double> adjusted(p.size(), kNaN);
  const std::size_t m = order.size();  // NaN p-values are not hypotheses
  double running_max = 0.0;            // step-down: adjusted values never decrease with p
  for (std::size_t rank = 0; rank < m; ++rank) {
    const std::size_t i = order[rank];
    const double scaled = std::min(1.0, static_cast<double>(m - rank) * p[i]);
    running_max = std::max(running_max, scaled);
    adjusted[i] = running_max;
  }
  return adjusted;
}

double student_t_two_sided_p(double t, double df) {
  if (std::isnan(t) || std::isnan(df) || df <= 0.0) return kNaN;
  if (std::isinf(t)) return 0.0;
  const double abs_t = std::fabs(t);
  // Upper tail via the complement, accurate for tiny p; infinite df is the standard normal.
  const double tail = std::isinf(df) ? boost::math::cdf(boost::math::complement(Normal(0.0, 1.0), abs_t))
                                     : boost::math::cdf(boost::math::complement(StudentT(df), abs_t));
  return std::min(1.0, 2.0 * tail);
}

}  // namespace liondg::stats
