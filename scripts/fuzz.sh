#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang-14, ASan + UBSan), writes their seed
# corpus and runs each target for a while. CI-sized by default.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]       (default 60)
#
# Environment:
#   LIONDG_FUZZ_BUILD    build directory (default build-fuzz, relative to the repository)
#   LIONDG_FUZZ_TARGETS  targets to run, space-separated (default: all)
#   LIONDG_FUZZ_JOBS     parallel compile jobs (default 2)
#   LIONDG_FUZZ_PYTHON   Python with numpy and PIL for the corpus (default /usr/bin/python3)
#   LIONDG_FUZZ_STRICT   1: also report contract violations that are exceptions (see fuzz/README.md)
#   LIONDG_FUZZ_KEEP_GOING  1: run in libFuzzer's fork mode and go on after a finding
#                        (-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1), so that each
#                        target runs its full time and may find several bugs
#
# Per target: BUILD/corpus/<target> is the working corpus (kept between runs),
# BUILD/seeds/<target> the generated seeds, BUILD/artifacts/<target>/ the crash,
# timeout and out-of-memory inputs, BUILD/logs/<target>.log libFuzzer's output. The
# summary gives per target the executions, the inputs saved as findings in this run
# and the distinct reports among them (see distinct_reports).
# Exits 1 if any target found something in this run, 2 on a setup error.
set -euo pipefail

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || (( seconds < 1 )); then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LIONDG_FUZZ_BUILD:-build-fuzz}
[[ $build = /* ]] || build=$root/$build
targets=${LIONDG_FUZZ_TARGETS:-"idx cifar image pickle archive config cache"}
jobs=${LIONDG_FUZZ_JOBS:-2}
python=${LIONDG_FUZZ_PYTHON:-/usr/bin/python3}

# ---------------------------------------------------------------- toolchain
fuzzer_runtime() {
  local lib
  lib=$(clang++-14 -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null || true)
  [[ -n $lib && -f $lib ]] && return 0
  compgen -G "/usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" > /dev/null
}
if ! command -v clang++-14 > /dev/null || ! fuzzer_runtime; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get > /dev/null; then
    echo "== installing clang-14 and libclang-rt-14-dev"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q clang-14 libclang-rt-14-dev
  else
    echo "error: clang++-14 and libFuzzer (Debian: apt-get install clang-14 libclang-rt-14-dev) are needed;" \
         "run this script as root to install them, or install them first" >&2
    exit 2
  fi
fi
if ! "$python" -c "import numpy, PIL" 2> /dev/null; then
  echo "error: $python lacks numpy or PIL (Debian: python3-numpy python3-pil); set LIONDG_FUZZ_PYTHON" >&2
  exit 2
fi

# ---------------------------------------------------------------- build
echo "== building into $build"
mkdir -p "$build"
cmake -S "$root/fuzz" -B "$build" -DCMAKE_CXX_COMPILER=clang++-14 > "$build/configure.log" 2>&1 || {
  cat "$build/configure.log" >&2
  exit 2
}
cmake --build "$build" -j "$jobs" --target fuzz_all

# ---------------------------------------------------------------- corpus
echo "== writing the seed corpus"
rm -rf "$build/seeds"
"$python" "$root/fuzz/make_corpus.py" "$build/seeds" --cache-seed-tool "$build/make_cache_seed"

# ---------------------------------------------------------------- runs
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1
# The distinct reports in a libFuzzer log, most frequent first: "COUNT REPORT" lines with
# the sanitizers' first lines (UBSan's names the place; numbers in its message become N),
# the target's own contract messages, failed assertions, libFuzzer's out-of-memory and
# timeout lines; else its "deadly signal" lines. grep -o: in fork mode the children's
# output can run into other lines.
distinct_reports() {
  local log=$1
  { grep -oE "[^[:space:]]+:[0-9]+:[0-9]+: runtime error: [^:]*|ERROR: (AddressSanitizer|LeakSanitizer): [A-Za-z-]+\
|an accepted grid failed afterwards: [^ ]*|read_cache threw instead of returning nullopt|Assertion \`[^']*' failed\
|ERROR: libFuzzer: (out-of-memory|timeout)" "$log" ||
    grep -oE 'ERROR: libFuzzer: deadly signal' "$log" || true; } |
    sed -E ':a; s/(runtime error: [^0-9]*)[0-9][0-9.e+-]*/\1N/; ta' | sort | uniq -c | sort -rn
}

mkdir -p "$build/logs"
summary=()
found_any=0
# Regression: every earlier finding (fuzz/findings/<target>-*) must now run clean.
for target in $targets; do
  mapfile -t old < <(find "$root/fuzz/findings" -type f -name "$target-*" 2> /dev/null | sort)
  (( ${#old[@]} > 0 )) || continue
  if "$build/fuzz_$target" -rss_limit_mb=2048 -timeout=10 "${old[@]}" > "$build/logs/$target-findings.log" 2>&1; then
    echo "== fuzz_$target: ${#old[@]} earlier finding(s) run clean"
  else
    echo "== fuzz_$target: an earlier finding fails again; see $build/logs/$target-findings.log"
    found_any=1
  fi
done
for target in $targets; do
  binary=$build/fuzz_$target
  if [[ ! -x $binary ]]; then
    echo "error: no fuzz target $binary" >&2
    exit 2
  fi
  corpus=$build/corpus/$target
  artifacts=$build/artifacts/$target
  log=$build/logs/$target.log
  mkdir -p "$corpus" "$artifacts"
  extra=()
  [[ -f $root/fuzz/$target.dict ]] && extra+=(-dict="$root/fuzz/$target.dict")
  [[ ${LIONDG_FUZZ_KEEP_GOING:-0} = 1 ]] && extra+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  stamp=$(mktemp)
  echo "== fuzz_$target: ${seconds}s"
  set +e
  # -max_total_time is checked between inputs; the outer timeout is a safety net.
  timeout --signal=INT --kill-after=30 $((seconds + 120)) \
    "$binary" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "${extra[@]}" "$corpus" "$build/seeds/$target" > "$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  [[ -n $runs ]] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
  # The last status line: "#N<tab>..." (also "#N: ..." in fork mode).
  [[ -n $runs ]] || runs=$(sed -n 's/^#\([0-9]*\)[:[:space:]].*/\1/p' "$log" | tail -n 1)
  [[ -n $runs ]] || runs="?"
  mapfile -t new < <(find "$artifacts" -type f -newer "$stamp" \
    \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | sort)
  rm -f "$stamp"
  findings=${#new[@]}
  if (( rc != 0 && findings == 0 )); then
    findings=1  # a failure that left no input (e.g. a crash at start-up): see the log
    new=("(no input saved; exit status $rc; see $log)")
  fi
  distinct=0
  if (( findings > 0 )); then
    found_any=1
    echo "   FOUND $findings new input(s), e.g. ${new[0]}"
    # Distinct reports, most frequent first (see distinct_reports).
    reports=$(distinct_reports "$log")
    # Fork mode does not log out-of-memory reports: count the saved inputs by kind then.
    [[ -n $reports ]] || reports=$(printf '%s\n' "${new[@]}" | sed -E 's|.*/||; s/-.*//' | sort | uniq -c |
      sed -E 's/$/ (kind of saved input; see the log and reproduce it)/')
    distinct=$(grep -c . <<< "$reports" || true)
    (( distinct > 0 )) || distinct=1
    head -n 5 <<< "$reports" | sed 's/^/   /'
  fi
  echo "   executions: $runs, corpus: $(find "$corpus" -type f | wc -l) files, log: $log"
  summary+=("$(printf '%-10s %12s %9s %9s' "$target" "$runs" "$findings" "$distinct")")
done

echo
printf '%-10s %12s %9s %9s\n' target executions findings distinct
printf '%s\n' "${summary[@]}"
if (( found_any )); then
  echo "findings are in $build/artifacts/<target>/ (reproduce: $build/fuzz_<target> FILE)"
  exit 1
fi
