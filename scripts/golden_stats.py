#!/usr/bin/env python3
"""Reference values for liondg::stats (include/liondg/stats/stats.h).

Writes tests/golden/stats.json, read by tests/test_stats.cpp. Run from anywhere with
the system Python (scipy and numpy):

    /usr/bin/python3 scripts/golden_stats.py

References:
  mean                      numpy.mean
  sample_std                numpy.std(ddof=1)
  mean_confidence_interval  scipy.stats.t.interval(level, n - 1, loc=mean, scale=s / sqrt(n))
  welch_t_test              scipy.stats.ttest_ind(a, b, equal_var=False) for t and p; df from
                            the Welch-Satterthwaite formula, computed here
  cohens_d, hedges_g        the header's formulas, computed here from numpy means and variances
  holm_adjust               statsmodels.stats.multitest.multipletests(method="holm") when
                            statsmodels is importable, else the explicit step-down below; the
                            JSON's "holm_reference" says which was used
  speedup_percent           100 * (mean(baseline) - mean(method)) / mean(baseline)
  student_t_two_sided_p     2 * scipy.stats.t.sf(|t|, df)

Degenerate cases (n < 2, zero variance, empty input, NaN p-values, non-finite t or df) do NOT
take scipy's answer, which is often nan or a huge-but-finite number from rounding: they encode
the conventions documented in stats.h (for instance, both variances zero with different means
-> t = +-inf, df = NaN, p = 0). "Zero variance" means all values of the sample are equal, so
that [0.1, 0.1, 0.1] counts as constant although numpy's std of it is ~1e-17.

JSON encoding: NaN is null, +-infinity is the string "inf" / "-inf".
"""

import json
import math
import os
import sys
import warnings

import numpy as np
import scipy
from scipy import stats as sps

try:  # optional: the explicit implementation below is the fallback
    from statsmodels.stats.multitest import multipletests  # type: ignore

    HOLM_REFERENCE = "statsmodels.stats.multitest.multipletests(method='holm')"
except ImportError:  # pragma: no cover - depends on the machine
    multipletests = None
    HOLM_REFERENCE = "explicit Python Holm step-down (statsmodels not installed)"

NAN = float("nan")
INF = float("inf")
CI_LEVELS = (0.95, 0.90, 0.99)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "golden", "stats.json")


# ------------------------------------------------------------------ encoding
def enc(v):
    """A float for JSON: NaN -> None (null), +-inf -> "inf" / "-inf"."""
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def enc_list(xs):
    return [enc(v) for v in xs]


# ------------------------------------------------------------------ helpers
def is_constant(x):
    """All values equal (mathematically zero variance); needs n >= 1."""
    return len(x) >= 1 and all(v == x[0] for v in x)


def mean(x):
    # Convention: NaN for an empty sample (numpy would warn and return nan too).
    return NAN if len(x) == 0 else float(np.mean(np.asarray(x, dtype=np.float64)))


def sample_std(x):
    # Convention: NaN for n < 2; exactly 0 for a constant sample.
    if len(x) < 2:
        return NAN
    if is_constant(x):
        return 0.0
    return float(np.std(np.asarray(x, dtype=np.float64), ddof=1))


def variance(x):
    s = sample_std(x)
    return s * s


def ci(x, level):
    # Conventions: n < 2 -> (NaN, NaN); s = 0 -> (mean, mean) (scipy gives nan for scale 0).
    n = len(x)
    if n < 2:
        return NAN, NAN
    m, s = mean(x), sample_std(x)
    if s == 0:
        return m, m
    lo, hi = sps.t.interval(level, n - 1, loc=m, scale=s / math.sqrt(n))
    return float(lo), float(hi)


def speedup_percent(baseline, method):
    # Convention: NaN if either sample is empty or mean(baseline) == 0.
    if len(baseline) == 0 or len(method) == 0:
        return NAN
    mb = mean(baseline)
    if mb == 0:
        return NAN
    return 100.0 * (mb - mean(method)) / mb


def signed_inf_or_zero(diff):
    # Convention for a zero denominator: equal means -> 0, else +-inf by the sign of the difference.
    if diff == 0:
        return 0.0
    return INF if diff > 0 else -INF


def welch(a, b):
    # Conventions: n < 2 -> all NaN; both variances 0 -> t = 0 / +-inf, df = NaN, p = 1 / 0.
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return NAN, NAN, NAN
    if is_constant(a) and is_constant(b):
        diff = mean(a) - mean(b)
        t = signed_inf_or_zero(diff)
        return t, NAN, (1.0 if diff == 0 else 0.0)
    with warnings.catch_warnings():
        # scipy warns about "catastrophic cancellation" when one sample is constant; the
        # result is still exact there (that sample's variance is 0), so the warning is noise.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.ttest_ind(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), equal_var=False)
    va, vb = variance(a) / na, variance(b) / nb
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return float(res.statistic), float(df), float(res.pvalue)


def cohens_d(a, b):
    # Convention: n < 2 -> NaN; pooled SD 0 -> 0 for equal means, else +-inf.
    if len(a) < 2 or len(b) < 2:
        return NAN
    diff = mean(a) - mean(b)
    sd = math.sqrt((variance(a) + variance(b)) / 2.0)
    if sd == 0:
        return signed_inf_or_zero(diff)
    return diff / sd


def hedges_g(a, b):
    # Convention: as cohens_d. J = 1 - 3 / (4 (n_a + n_b) - 9), (n-1)-weighted pooled SD.
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return NAN
    diff = mean(a) - mean(b)
    sd = math.sqrt(((na - 1) * variance(a) + (nb - 1) * variance(b)) / (na + nb - 2))
    if sd == 0:
        return signed_inf_or_zero(diff)
    j = 1.0 - 3.0 / (4.0 * (na + nb) - 9.0)
    return j * diff / sd


def holm_explicit(p):
    """Holm step-down on the finite p-values; NaN stays NaN and is not counted."""
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    m = len(idx)
    out = [NAN] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def holm(p):
    if multipletests is None:
        return holm_explicit(p)
    # statsmodels does not skip NaN: run it on the non-NaN subset and put NaN back
    # (the documented convention: NaN stays NaN and does not count).
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    out = [NAN] * len(p)
    if idx:
        adj = multipletests([p[i] for i in idx], method="holm")[1]
        for i, v in zip(idx, adj):
            out[i] = float(v)
    return out


def two_sided_p(t, df):
    # Conventions: NaN t or df, or df <= 0 -> NaN; |t| = inf -> 0; df = inf -> standard normal.
    if math.isnan(t) or math.isnan(df) or df <= 0:
        return NAN
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return float(2.0 * sps.norm.sf(abs(t)))
    return float(2.0 * sps.t.sf(abs(t), df))


# ------------------------------------------------------------------ cases
STEPS_A = [820.0, 760.0, 905.0]
STEPS_B = [610.0, 655.0, 590.0]
ACC_A = [0.712, 0.705, 0.721]
ACC_B = [0.718, 0.709, 0.715]

# (name, a, b): a is the baseline of speedup_percent(a, b); Welch, d and g are of a versus b.
PAIRS = [
    ("steps_3_seeds", STEPS_A, STEPS_B),
    ("steps_3_seeds_swapped", STEPS_B, STEPS_A),
    ("accuracy_3_seeds", ACC_A, ACC_B),
    ("unequal_sizes_3_vs_5", STEPS_A, [600.0, 640.0, 610.0, 700.0, 580.0]),
    ("unequal_sizes_5_vs_3", [600.0, 640.0, 610.0, 700.0, 580.0], STEPS_A),
    ("unequal_variances_4_vs_6", [1.0, 2.0, 3.0, 4.0], [10.0, 30.0, -5.0, 22.0, 0.0, 17.0]),
    ("large_difference", [1000.0, 1010.0, 990.0], [100.0, 101.0, 99.0]),
    ("very_large_difference", [10000.0, 10001.0, 9999.0], [0.0, 1.0, 2.0]),
    ("n_2_each", [0.5, 0.7], [0.3, 0.35]),
    ("n_2_vs_3", [820.0, 760.0], STEPS_B),
    ("identical_samples", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
    ("one_zero_variance", [700.0, 700.0, 700.0], [650.0, 640.0, 660.0]),
    ("baseline_mean_zero", [-1.0, 0.0, 1.0], [1.0, 2.0, 3.0]),
    # Degenerate: documented conventions, not scipy.
    ("degenerate_a_n_1", [820.0], STEPS_B),
    ("degenerate_b_n_1", STEPS_A, [610.0]),
    ("degenerate_both_n_1", [3.0], [4.0]),
    ("degenerate_zero_variance_equal_means", [5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0]),
    ("degenerate_zero_variance_a_greater", [7.0, 7.0], [5.0, 5.0, 5.0]),
    ("degenerate_zero_variance_a_smaller", [5.0, 5.0, 5.0], [7.0, 7.0]),
    ("degenerate_zero_variance_inexact_constant", [0.1, 0.1, 0.1], [0.2, 0.2, 0.2]),
    ("degenerate_empty_a", [], [1.0, 2.0, 3.0]),
    ("degenerate_empty_b", [1.0, 2.0, 3.0], []),
    ("degenerate_both_empty", [], []),
]

EXTRA_SAMPLES = [
    ("ten_values", [0.61, 0.64, 0.58, 0.66, 0.70, 0.59, 0.63, 0.65, 0.62, 0.67]),
    ("negative_values", [-3.5, -1.25, -2.0, -4.75]),
    ("constant_inexact", [0.7, 0.7, 0.7, 0.7]),
]

HOLM_CASES = [
    ("four_tests", [0.01, 0.04, 0.03, 0.005]),
    ("monotone_enforced", [0.04, 0.01, 0.03]),
    ("capped_at_one", [0.5, 0.6, 0.9]),
    ("ties", [0.01, 0.01, 0.02]),
    ("with_zero", [0.0, 0.5, 0.2]),
    ("single", [0.03]),
    ("ten_tests", [0.001, 0.2, 0.013, 0.04, 0.5, 0.0004, 0.03, 0.9, 0.007, 0.06]),
    ("nan_skipped", [0.02, NAN, 0.01, 0.04]),
    ("nan_first_and_last", [NAN, 0.03, 0.2, NAN]),
    ("all_nan", [NAN, NAN]),
    ("empty", []),
]

T_P_CASES = [
    (0.0, 5.0),
    (2.0, 4.0),
    (-2.0, 4.0),
    (1.5, 2.5),
    (0.3, 1.0),
    (10.0, 3.0),
    (45.0, 2.0),
    (3.0, 1000.0),
    (1.959963984540054, 1.0e6),
    (6.0, 30.0),
    # Conventions, not scipy:
    (2.0, INF),
    (INF, 5.0),
    (-INF, 5.0),
    (INF, INF),
    (NAN, 5.0),
    (2.0, NAN),
    (2.0, 0.0),
    (2.0, -1.0),
]


def sample_entry(name, x):
    return {
        "name": name,
        "x": enc_list(x),
        "mean": enc(mean(x)),
        "std": enc(sample_std(x)),
        "ci": [{"level": lv, "low": enc(ci(x, lv)[0]), "high": enc(ci(x, lv)[1])} for lv in CI_LEVELS],
    }


def main():
    samples, seen = [], set()
    for name, a, b in PAIRS:
        for suffix, x in (("a", a), ("b", b)):
            key = tuple(x)
            if key not in seen:
                seen.add(key)
                samples.append(sample_entry(f"{name}.{suffix}", x))
    for name, x in EXTRA_SAMPLES:
        samples.append(sample_entry(name, x))

    pairs = []
    for name, a, b in PAIRS:
        t, df, p = welch(a, b)
        pairs.append({
            "name": name,
            "a": enc_list(a),
            "b": enc_list(b),
            "welch": {"t": enc(t), "df": enc(df), "p": enc(p)},
            "cohens_d": enc(cohens_d(a, b)),
            "hedges_g": enc(hedges_g(a, b)),
            "speedup_percent": enc(speedup_percent(a, b)),
        })

    holm_cases = [{"name": n, "p": enc_list(p), "adjusted": enc_list(holm(p))} for n, p in HOLM_CASES]
    t_p = [{"t": enc(t), "df": enc(df), "p": enc(two_sided_p(t, df))} for t, df in T_P_CASES]

    doc = {
        "generator": "scripts/golden_stats.py",
        "scipy_version": scipy.__version__,
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
        "holm_reference": HOLM_REFERENCE,
        "encoding": "NaN is null; +-infinity is the string \"inf\" / \"-inf\"",
        "conventions": "degenerate cases follow include/liondg/stats/stats.h, not scipy",
        "speedup_percent": "speedup_percent(baseline = a, method = b)",
        "samples": samples,
        "pairs": pairs,
        "holm": holm_cases,
        "student_t_two_sided_p": t_p,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)  # allow_nan=False: no bare NaN slips through
        f.write("\n")
    n = len(samples) + len(pairs) + len(holm_cases) + len(t_p)
    print(f"wrote {OUT}: {len(samples)} samples, {len(pairs)} pairs, {len(holm_cases)} Holm, "
          f"{len(t_p)} t->p ({n} cases); Holm reference: {HOLM_REFERENCE}")


if __name__ == "__main__":
    main()
