#!/usr/bin/env bash
# End-to-end checks of the liondg command line: exit codes, messages, run
# directory contents and determinism. Usage: cli_test.sh PATH/TO/liondg
set -u
LIONDG=${1:?usage: cli_test.sh PATH/TO/liondg}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0
fail=0

# expect_exit CODE NEEDLE -- command...: runs the command, checks the exit code and
# that stderr+stdout contain NEEDLE (empty NEEDLE: no check).
expect_exit() {
  local want=$1 needle=$2
  shift 3
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if [[ $rc -ne $want ]]; then
    echo "FAIL: exit $rc, expected $want: $*"; echo "$out" | tail -5; fail=$((fail + 1)); return
  fi
  if [[ -n $needle && $out != *"$needle"* ]]; then
    echo "FAIL: output lacks '$needle': $*"; echo "$out" | tail -5; fail=$((fail + 1)); return
  fi
  pass=$((pass + 1))
}

TINY_DATA=(--dataset synthetic --synthetic-train-size 128 --synthetic-test-size 64 --synthetic-image-size 16
           --synthetic-classes 4 --growth-rate 4 --block-layers 1,1,1 --threads 1)
TINY=("${TINY_DATA[@]}" --batch-size 16 --quiet)

# --help everywhere
expect_exit 0 "--target-acc" -- "$LIONDG" train --help
expect_exit 0 "--json" -- "$LIONDG" verify decoupling --help
expect_exit 0 "decoupling" -- "$LIONDG" verify --help
expect_exit 0 "liondg" -- "$LIONDG" --version

# usage errors: exit 2, message names the flag and the bad value
expect_exit 2 "--model: vgg" -- "$LIONDG" train --model vgg
expect_exit 2 "--init: kaiming" -- "$LIONDG" train --init kaiming
expect_exit 2 "--dataset: imagenet" -- "$LIONDG" train --dataset imagenet
expect_exit 2 "--steps" -- "$LIONDG" train --steps -5
expect_exit 2 "--target-acc" -- "$LIONDG" train --target-acc 1.5
expect_exit 2 "--batch-size" -- "$LIONDG" train --batch-size 0
expect_exit 2 "--frobnicate" -- "$LIONDG" train --frobnicate
expect_exit 2 "" -- "$LIONDG"
expect_exit 2 "growth_rate must be in [1, 1048576], got 4611686018427387904" -- "$LIONDG" train --dataset synthetic \
  --synthetic-classes 4 --growth-rate 4611686018427387904 --steps 2 --quiet --out "$TMP/bad-growth"
expect_exit 2 "aux head after block 3" -- "$LIONDG" train "${TINY[@]}" --aux-after 3 --out "$TMP/bad-aux"
expect_exit 2 "exceeds the training split" -- "$LIONDG" train "${TINY_DATA[@]}" --quiet --batch-size 500 --out "$TMP/bad-bs"
expect_exit 2 "--batch-size" -- "$LIONDG" train "${TINY[@]}" --batch-size 32 --out "$TMP/twice"

# --device: a bad name is a usage error; CUDA on a CPU-only build says so (exit 2)
expect_exit 2 "--device: expected cpu, cuda or cuda:N, got 'tpu'" -- "$LIONDG" train "${TINY[@]}" --device tpu --out "$TMP/dev"
expect_exit 2 "--device" -- "$LIONDG" grid --preset smoke --device gpu --out "$TMP/devgrid"
if ! "$LIONDG" bench step --model resnet-ds --device cuda --steps 1 >/dev/null 2>&1; then
  expect_exit 2 "no CUDA device is available" -- "$LIONDG" train "${TINY[@]}" --steps 2 --device cuda --out "$TMP/cuda"
fi
# --bf16: a DenseNet-DS run in the fused CPU loop, recorded in config.json; refused where it would not apply
expect_exit 0 "status: completed" -- "$LIONDG" train "${TINY[@]}" --steps 4 --bf16 --out "$TMP/bf16"
if grep -q '"bf16": true' "$TMP/bf16/config.json"; then
  pass=$((pass + 1))
else
  echo "FAIL: bf16 run: config.json lacks \"bf16\": true"; fail=$((fail + 1))
fi
expect_exit 2 "no bfloat16 path" -- "$LIONDG" train "${TINY[@]}" --model resnet-ds --bf16 --out "$TMP/bf16-resnet"
expect_exit 2 "fused blocks off" -- "$LIONDG" train "${TINY[@]}" --bf16 --no-fused --out "$TMP/bf16-plain"
expect_exit 2 "fixup blocks" -- "$LIONDG" train "${TINY[@]}" --bf16 --init fixup --out "$TMP/bf16-fixup"
expect_exit 2 "bench step --bf16 is a CPU mode" -- "$LIONDG" bench step --model densenet-ds --bf16 --device cuda --steps 1
# The resident loop on the CPU: a run like any other, recorded as such in config.json
expect_exit 0 "status: completed" -- "$LIONDG" train "${TINY[@]}" --steps 6 --eval-every 3 --resident --sync-every 4 --out "$TMP/resident"
if grep -q '"resident": true' "$TMP/resident/config.json" && [[ $(wc -l < "$TMP/resident/metrics.csv") -eq 7 ]]; then
  pass=$((pass + 1))
else
  echo "FAIL: resident run: config.json lacks resident or metrics.csv has not 6 steps"; fail=$((fail + 1))
fi

# runtime errors: exit 1, message names the file or directory
expect_exit 1 "/nonexistent/fmnist" -- "$LIONDG" train --data /nonexistent/fmnist --out "$TMP/x"
mkdir -p "$TMP/badidx"
printf 'not an idx file at all' > "$TMP/badidx/train-images-idx3-ubyte"
printf '\0\0\x08\x01\0\0\0\x02\x01\x02' > "$TMP/badidx/train-labels-idx1-ubyte"
cp "$TMP/badidx/train-images-idx3-ubyte" "$TMP/badidx/t10k-images-idx3-ubyte"
cp "$TMP/badidx/train-labels-idx1-ubyte" "$TMP/badidx/t10k-labels-idx1-ubyte"
expect_exit 1 "train-images-idx3-ubyte' is not an IDX file" -- "$LIONDG" train --dataset mnist --data "$TMP/badidx" --out "$TMP/y"
touch "$TMP/afile"
expect_exit 1 "cannot be created" -- "$LIONDG" train "${TINY[@]}" --steps 2 --out "$TMP/afile/run"

# a real tiny run
expect_exit 0 "status: completed" -- "$LIONDG" train "${TINY[@]}" --steps 8 --eval-every 4 --out "$TMP/run1"
for f in config.json metrics.csv summary.json model.pt; do
  if [[ -s $TMP/run1/$f ]]; then pass=$((pass + 1)); else echo "FAIL: run1/$f missing"; fail=$((fail + 1)); fi
done
if [[ $(wc -l < "$TMP/run1/metrics.csv") -eq 9 ]]; then pass=$((pass + 1)); else echo "FAIL: metrics.csv rows"; fail=$((fail + 1)); fi

# an existing finished run is never overwritten silently
sum_before=$(md5sum "$TMP/run1/summary.json")
expect_exit 2 "already holds a finished run" -- "$LIONDG" train "${TINY[@]}" --steps 8 --out "$TMP/run1"
if [[ $(md5sum "$TMP/run1/summary.json") == "$sum_before" ]]; then pass=$((pass + 1)); else echo "FAIL: summary changed"; fail=$((fail + 1)); fi

# determinism: same seed -> same metrics (all columns but the step time)
"$LIONDG" train "${TINY[@]}" --steps 8 --eval-every 4 --out "$TMP/run2" > /dev/null 2>&1
strip_time() {  # prints the CSV without its step_seconds column
  awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "step_seconds") c = i }
           { line = ""; for (i = 1; i <= NF; i++) if (i != c) line = line "," $i; print line }' "$1"
}
if [[ "$(strip_time "$TMP/run1/metrics.csv")" == "$(strip_time "$TMP/run2/metrics.csv")" ]]; then
  pass=$((pass + 1)); else echo "FAIL: same seed gave different metrics"; fail=$((fail + 1)); fi
"$LIONDG" train "${TINY[@]}" --steps 8 --seed 7 --out "$TMP/run3" > /dev/null 2>&1
if [[ "$(strip_time "$TMP/run1/metrics.csv")" != "$(strip_time "$TMP/run3/metrics.csv")" ]]; then
  pass=$((pass + 1)); else echo "FAIL: different seeds gave identical metrics"; fail=$((fail + 1)); fi

# --json summary
expect_exit 0 '"steps_to_target"' -- "$LIONDG" train "${TINY[@]}" --steps 4 --json --out "$TMP/run4"

# init plans: every preset trains and writes its audit
for init in he xavier lion-dg lsuv lion-lsuv fixup rezero gradinit; do
  expect_exit 0 "status: completed" -- "$LIONDG" train "${TINY[@]}" --steps 3 --init "$init" --lsuv-samples 32 \
    --gradinit-iters 2 --gradinit-batch-size 16 --out "$TMP/init-$init"
  if grep -q '"stages"' "$TMP/init-$init/init.json" 2>/dev/null; then pass=$((pass + 1)); else echo "FAIL: init.json for $init"; fail=$((fail + 1)); fi
done
expect_exit 0 "status: completed" -- "$LIONDG" train "${TINY[@]}" --steps 3 --init he --aux-init small --backbone-init xavier \
  --aux-schedule linear:2 --no-decay-scalars --scalar-lr-mult 0.1 --out "$TMP/custom-plan"
expect_exit 2 "--aux-schedule" -- "$LIONDG" train "${TINY[@]}" --aux-schedule linear:zero --out "$TMP/bad-schedule"
expect_exit 2 "--aux-init: ones" -- "$LIONDG" train "${TINY[@]}" --aux-init ones --out "$TMP/bad-aux-init"
expect_exit 2 "--backbone-init: orthogonal" -- "$LIONDG" train "${TINY[@]}" --backbone-init orthogonal --out "$TMP/bad-bb"

# Proposition 2 and Theorem 1 from the command line
expect_exit 0 "Proposition 2 supported" -- "$LIONDG" verify growth --dataset synthetic --synthetic-train-size 256 \
  --synthetic-image-size 16 --synthetic-classes 4 --growth-rate 4 --block-layers 2,2,2 --threads 1 --steps 25 \
  --fit-steps 10 --batch-size 32 --csv "$TMP/growth.csv"
if [[ $(wc -l < "$TMP/growth.csv") -eq 26 ]]; then pass=$((pass + 1)); else echo "FAIL: growth.csv rows"; fail=$((fail + 1)); fi
expect_exit 0 "side-tap requirement supported" -- "$LIONDG" verify architecture "${TINY_DATA[@]}" --widths 8,16,32 \
  --blocks-per-stage 1,1,1 --steps 10 --batch-size 32 --csv "$TMP/arch.csv"
expect_exit 0 "DECOUPLED (backbone gradient exactly zero) as expected" -- "$LIONDG" verify decoupling "${TINY_DATA[@]}" \
  --init lion-lsuv --batch-size 32
expect_exit 0 "COUPLED as expected" -- "$LIONDG" verify decoupling "${TINY_DATA[@]}" --init fixup --batch-size 32

# grids
expect_exit 0 "8 cells (shard 1/1 of 8), estimated" -- "$LIONDG" grid --preset quick --dry-run --out "$TMP/q"
expect_exit 0 "42 cells (shard 2/2 of 84)" -- "$LIONDG" grid --preset paper --dry-run --no-estimate --shard 2/2 --out "$TMP/p"
expect_exit 2 "--shard expects I/N" -- "$LIONDG" grid --preset smoke --shard 3/2 --out "$TMP/s"
expect_exit 2 "needs --preset NAME or --config FILE" -- "$LIONDG" grid --out "$TMP/s"
expect_exit 2 "excludes" -- "$LIONDG" grid --preset smoke --config x.toml
printf 'datasets = ["synthetic"]\nmodels = ["resnet-ds"\n' > "$TMP/bad.toml"
expect_exit 2 "line 2" -- "$LIONDG" grid --config "$TMP/bad.toml" --out "$TMP/s"
expect_exit 1 "does not exist" -- "$LIONDG" grid --config "$TMP/missing.toml" --out "$TMP/s"
expect_exit 2 "--data expects DATASET=PATH" -- "$LIONDG" grid --preset smoke --data cifar10 --out "$TMP/s"
printf 'datasets = ["synthetic"]\nmodels = ["densenet-ds"]\ninits = ["he"]\nseeds = [1]\n[train]\nbf16 = true\n' > "$TMP/bf16.toml"
expect_exit 2 "applies to the fused CPU blocks only" -- "$LIONDG" grid --config "$TMP/bf16.toml" --device cuda --out "$TMP/s"
expect_exit 0 "report: $TMP/smoke/report.md" -- "$LIONDG" grid --preset smoke --jobs 2 --out "$TMP/smoke"
expect_exit 0 "already finished, 0 to run" -- "$LIONDG" grid --preset smoke --out "$TMP/smoke"
expect_exit 0 "| synthetic | densenet-ds | lion-dg |" -- "$LIONDG" report "$TMP/smoke"
expect_exit 1 "no results.jsonl" -- "$LIONDG" report "$TMP"
# the same grid in two shards, merged
expect_exit 0 "" -- "$LIONDG" grid --preset smoke --shard 1/2 --out "$TMP/sh1" --no-report --quiet
expect_exit 0 "" -- "$LIONDG" grid --preset smoke --shard 2/2 --out "$TMP/sh2" --no-report --quiet
expect_exit 0 "0 failed, 0 missing" -- "$LIONDG" grid merge "$TMP/sh1" "$TMP/sh2" --out "$TMP/merged"
expect_exit 0 "| synthetic | densenet-ds | lion-dg |" -- cat "$TMP/merged/report.md"
if /usr/bin/python3 - "$TMP/smoke/results.jsonl" "$TMP/merged/results.jsonl" <<'PY'
import json, sys
keys = [sorted((json.loads(l)["key"], json.loads(l)["status"]) for l in open(p) if l.strip()) for p in sys.argv[1:]]
assert keys[0] == keys[1], keys
PY
then pass=$((pass + 1)); else echo "FAIL: merged shards do not hold the cells of the whole grid"; fail=$((fail + 1)); fi
expect_exit 1 "incomplete" -- "$LIONDG" grid merge "$TMP/sh1" --out "$TMP/merged-half" --no-report
expect_exit 2 "not empty" -- "$LIONDG" grid merge "$TMP/sh1" "$TMP/sh2" --out "$TMP/merged"

# parameter counts per role
expect_exit 0 "total: 163182" -- "$LIONDG" describe --model densenet-ds
expect_exit 0 "aux_head_1 reads tap 'stage2' (32 channels)" -- "$LIONDG" describe --model resnet-ds
expect_exit 2 "--num-classes" -- "$LIONDG" describe --num-classes 1

# Proposition 1 from the command line
expect_exit 0 '"backbone_max_abs_grad":0.0' -- "$LIONDG" verify decoupling "${TINY_DATA[@]}" --init lion-dg --json
expect_exit 0 '"decoupled":false' -- "$LIONDG" verify decoupling --dataset synthetic --synthetic-train-size 64 --model resnet-ds --init he --json --batch-size 32
expect_exit 0 "DECOUPLED (backbone gradient exactly zero) as expected" -- "$LIONDG" verify decoupling --dataset synthetic --synthetic-train-size 64 --model resnet-ds --init lion-dg --batch-size 32

# data sources: archives and pickles written by a fixture script, the cache, bad input
export LIONDG_CACHE_DIR="$TMP/cache"
FX="$TMP/fixtures"
mkdir -p "$FX"
if ! /usr/bin/python3 "$(dirname "$0")/make_data_fixtures.py" "$FX"; then
  echo "FAIL: make_data_fixtures.py (needs /usr/bin/python3 with numpy: Debian python3-numpy)"; fail=$((fail + 1))
fi
# expect_info SOURCE KEY [args...]: `data info --json` matches expected.json[KEY] (counts, means).
expect_info() {
  local src=$1 key=$2
  shift 2
  local out
  out=$("$LIONDG" data info "$src" --json "$@" 2>&1)
  if /usr/bin/python3 - "$FX/expected.json" "$key" "$out" <<'PY'
import json, sys
want = json.load(open(sys.argv[1]))[sys.argv[2]]
got = json.loads(sys.argv[3])
for split, w in want.items():
    g = got["splits"][split]
    assert g["count"] == w["count"], (split, g["count"], w["count"])
    if "mean" in w:
        assert all(abs(a - b) < 1e-9 for a, b in zip(g["mean"], w["mean"])), (split, g["mean"], w["mean"])
    assert sum(g["per_class"]) == w["count"]
PY
  then pass=$((pass + 1)); else echo "FAIL: data info $src ($key)"; echo "$out" | tail -5; fail=$((fail + 1)); fi
}
expect_info "$FX/folder.tar.gz" folder
expect_info "$FX/folder.zip" folder --dataset folder
expect_info "$FX/cifar-10-python.tar.gz" cifar10
expect_info "$FX/cifar-100-python.tar.gz" cifar100 --dataset cifar100
expect_exit 0 '"format": "cifar10-python"' -- "$LIONDG" data info "$FX/cifar-10-python.tar.gz" --json
expect_exit 0 '"coarse_classes"' -- "$LIONDG" data info "$FX/cifar-100-python.tar.gz" --json
expect_exit 0 "cache: $LIONDG_CACHE_DIR/folder.tar.gz-" -- "$LIONDG" data info "$FX/folder.tar.gz"
expect_exit 0 "(hit)" -- "$LIONDG" data info "$FX/folder.tar.gz"
expect_exit 0 "cache: none" -- "$LIONDG" data info "$FX/folder.tar.gz" --no-cache
expect_exit 1 "holds CIFAR-10 python (pickle) files" -- "$LIONDG" data info "$FX/cifar-10-python.tar.gz" --dataset cifar100
expect_exit 1 "image folder with 3 classes, but --dataset cifar10" -- "$LIONDG" train --dataset cifar10 --data "$FX/folder.zip" --out "$TMP/d1"
head -c 2000 "$FX/folder.tar.gz" > "$TMP/cut.tar.gz"
expect_exit 1 "cut.tar.gz" -- "$LIONDG" data info "$TMP/cut.tar.gz"
expect_exit 2 "--resize 'abc'" -- "$LIONDG" data info "$FX/folder.zip" --resize abc
expect_exit 0 '"shape": [' -- "$LIONDG" data info "$FX/folder.zip" --resize 4x6 --json
# training on an archive, validating on a held-out split, then the test split once
expect_exit 0 "final test acc" -- "$LIONDG" train --dataset folder --data "$FX/folder.tar.gz" --val-split 3 \
  --growth-rate 4 --block-layers 1,1,1 --threads 1 --batch-size 4 --steps 3 --quiet --crop-padding 2 --out "$TMP/dv"
expect_exit 0 '"eval_split": "val"' -- cat "$TMP/dv/config.json"
expect_exit 0 '"test_acc"' -- cat "$TMP/dv/summary.json"
expect_exit 2 "--val-split" -- "$LIONDG" train --dataset folder --data "$FX/folder.tar.gz" --val-split 12 --quiet --out "$TMP/dv2"
# fetching: no network fails fast with instructions; a wrong file fails its checksum
expect_exit 1 "supply the file by hand" -- "$LIONDG" data fetch mnist --mirror http://127.0.0.1:1/ --to "$TMP/dl" --quiet
mkdir -p "$TMP/mirror" && printf 'not the real archive' > "$TMP/mirror/cifar-10-binary.tar.gz"
expect_exit 1 "checksum" -- "$LIONDG" data fetch cifar10 --mirror "file://$TMP/mirror/" --to "$TMP/dl" --quiet
expect_exit 2 "--format" -- "$LIONDG" data fetch cifar10 --format jpeg
expect_exit 2 "dataset: imagenet" -- "$LIONDG" data fetch imagenet

# data parallel: 2 local ranks equal one process (no BatchNorm: per-rank statistics
# would differ by design), only rank 0 writes, errors name the variable
DP=(train "${TINY_DATA[@]}" --no-batch-norm --steps 6 --eval-every 3 --grad-every 2 --quiet --no-save-model)
expect_exit 0 "[rank 0] status: completed" -- "$LIONDG" launch --nproc 2 -- "${DP[@]}" --batch-size 16 --out "$TMP/dp2"
expect_exit 0 "" -- "$LIONDG" "${DP[@]}" --batch-size 16 --out "$TMP/dp1"
expect_exit 0 '"world_size": 2' -- cat "$TMP/dp2/config.json"
expect_exit 0 "same metrics" -- /usr/bin/python3 - "$TMP/dp1/metrics.csv" "$TMP/dp2/metrics.csv" <<'PY'
import csv, math, sys
one, two = (list(csv.DictReader(open(p))) for p in sys.argv[1:3])
assert len(one) == len(two) == 6, (len(one), len(two))
for a, b in zip(one, two):
    for k in ("loss", "main_loss", "main_acc", "grad_main_norm", "grad_aux_norm", "val_main_acc"):
        if a[k] == "" and b[k] == "":
            continue
        x, y = float(a[k]), float(b[k])
        assert abs(x - y) <= 1e-5 * (1 + abs(x)), (a["step"], k, x, y)
print("same metrics")
PY
expect_exit 2 "RANK=5 must be in [0, WORLD_SIZE=2)" -- env WORLD_SIZE=2 RANK=5 "$LIONDG" "${DP[@]}" --batch-size 16 --out "$TMP/dpx"
expect_exit 2 "must be divisible by WORLD_SIZE=2" -- "$LIONDG" launch --nproc 2 -- "${DP[@]}" --batch-size 15 --out "$TMP/dpy"
expect_exit 2 "no command given" -- "$LIONDG" launch --nproc 2
expect_exit 2 "--nproc" -- "$LIONDG" launch -- train
expect_exit 2 "needs a CUDA build" -- "$LIONDG" launch --nproc 2 -- "${DP[@]}" --batch-size 16 --dist-backend nccl --out "$TMP/dpz"
# a killed rank ends the job with a message, not a hang: under the launcher ...
LONG=(train "${TINY_DATA[@]}" --batch-size 16 --steps 1000000 --eval-every 0 --grad-every 0 --quiet --no-save-model --dist-timeout 30)
rank_pid() {  # rank_pid PARENT RANK: the child of PARENT started with RANK=R
  local p
  for p in $(pgrep -P "$1"); do
    tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "RANK=$2" && { echo "$p"; return; }
  done
}
wait_for_steps() {  # wait_for_steps FILE: until training has written a few rows
  for _ in $(seq 1 600); do
    [[ -f $1 && $(wc -l < "$1") -gt 3 ]] && return 0
    sleep 0.1
  done
  return 1
}
"$LIONDG" launch --nproc 2 -- "${LONG[@]}" --out "$TMP/dpk" > "$TMP/dpk.log" 2>&1 &
launcher=$!
wait_for_steps "$TMP/dpk/metrics.csv"
kill -9 "$(rank_pid $launcher 1)"
timeout 60 tail --pid=$launcher -f /dev/null
wait $launcher
rc=$?
if [[ $rc -ne 137 ]] || ! grep -q "rank 1 (pid [0-9]*) was killed by signal 9" "$TMP/dpk.log" ||
   ! grep -q '"status": "failed"' "$TMP/dpk/summary.json"; then
  echo "FAIL: killed rank under launch: exit $rc"; tail -5 "$TMP/dpk.log"; fail=$((fail + 1))
else
  pass=$((pass + 1))
fi
# ... and without it (torchrun-style variables set by hand): rank 0 fails, naming the cause
port=$((20000 + RANDOM % 20000))
env WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$LIONDG" "${LONG[@]}" --out "$TMP/dpm" > "$TMP/dpm0.log" 2>&1 &
r0=$!
env WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$LIONDG" "${LONG[@]}" --out "$TMP/dpm" > "$TMP/dpm1.log" 2>&1 &
r1=$!
wait_for_steps "$TMP/dpm/metrics.csv"
{ kill -9 $r1; wait $r1; } 2> /dev/null
timeout 60 tail --pid=$r0 -f /dev/null
wait $r0
rc=$?
if [[ $rc -ne 1 ]] || ! grep -q "failed on rank 0" "$TMP/dpm0.log"; then
  echo "FAIL: rank 0 after its peer was killed: exit $rc"; tail -3 "$TMP/dpm0.log"; kill -9 $r0 2>/dev/null; fail=$((fail + 1))
else
  pass=$((pass + 1))
fi

# checkpoints: SIGTERM stops at a step boundary (exit 130, checkpoint, status
# "interrupted"); --resume continues and the metrics equal an uninterrupted run's
CK0=(train "${TINY_DATA[@]}" --batch-size 16 --eval-every 50 --grad-every 3 --quiet --no-save-model)
CK=("${CK0[@]}" --steps 400)
same_metrics() {  # same_metrics A B: every column but step_seconds equal, as text
  /usr/bin/python3 - "$1" "$2" <<'PY'
import csv, sys
a, b = (list(csv.DictReader(open(p))) for p in sys.argv[1:3])
assert len(a) == len(b), (len(a), len(b))
bad = [(x["step"], k) for x, y in zip(a, b) for k in x if k != "step_seconds" and x[k] != y[k]]
assert not bad, bad[:5]
PY
}
"$LIONDG" "${CK[@]}" --out "$TMP/ck-whole" > /dev/null
"$LIONDG" "${CK[@]}" --out "$TMP/ck-term" --checkpoint-every 25 > /dev/null 2> "$TMP/ck-term.log" &
ck=$!
wait_for_steps "$TMP/ck-term/metrics.csv"
sleep 0.5
kill -TERM $ck
wait $ck
rc=$?
if [[ $rc -eq 130 ]] && grep -q '"status": "interrupted"' "$TMP/ck-term/summary.json" &&
   grep -q "plus --resume" "$TMP/ck-term.log" && [[ -f $TMP/ck-term/checkpoint.pt ]]; then
  pass=$((pass + 1))
else
  echo "FAIL: SIGTERM: exit $rc"; cat "$TMP/ck-term.log"; fail=$((fail + 1))
fi
expect_exit 2 "belongs to a run with batch size 16 and seed 42; this run has batch size 16 and seed 7" -- "$LIONDG" "${CK[@]}" --seed 7 --out "$TMP/ck-term" --resume
expect_exit 0 "status: completed" -- "$LIONDG" "${CK[@]}" --out "$TMP/ck-term" --checkpoint-every 25 --resume
if same_metrics "$TMP/ck-whole/metrics.csv" "$TMP/ck-term/metrics.csv"; then pass=$((pass + 1)); else
  echo "FAIL: resumed after SIGTERM differs from the uninterrupted run"; fail=$((fail + 1)); fi
# SIGKILL: no chance to clean up; the last periodic checkpoint and the CSV prefix suffice
"$LIONDG" "${CK[@]}" --out "$TMP/ck-kill" --checkpoint-every 25 > /dev/null 2>&1 &
ck=$!
for _ in $(seq 1 600); do [[ -f $TMP/ck-kill/checkpoint.pt ]] && break; sleep 0.1; done
sleep 0.3
{ kill -9 $ck; wait $ck; } 2> /dev/null
expect_exit 0 "status: completed" -- "$LIONDG" "${CK[@]}" --out "$TMP/ck-kill" --checkpoint-every 25 --resume
if same_metrics "$TMP/ck-whole/metrics.csv" "$TMP/ck-kill/metrics.csv"; then pass=$((pass + 1)); else
  echo "FAIL: resumed after SIGKILL differs from the uninterrupted run"; fail=$((fail + 1)); fi
expect_exit 2 "has already completed" -- "$LIONDG" "${CK[@]}" --out "$TMP/ck-kill" --resume
expect_exit 2 "holds no checkpoint" -- "$LIONDG" "${CK[@]}" --out "$TMP/ck-none" --resume
expect_exit 2 "excludes" -- "$LIONDG" "${CK[@]}" --out "$TMP/ck-none" --resume --overwrite
mkdir -p "$TMP/ck-bad" && printf 'garbage' > "$TMP/ck-bad/checkpoint.pt"
expect_exit 1 "ck-bad/checkpoint.pt' is not a readable liondg checkpoint" -- "$LIONDG" "${CK[@]}" --out "$TMP/ck-bad" --resume
# disk full (a file-size limit makes writes fail with EFBIG): a clear error naming the
# file, exit 1, and what was written before stays valid
(ulimit -f 40; trap '' XFSZ; "$LIONDG" "${CK0[@]}" --steps 3000 --checkpoint-every 100 --out "$TMP/full" > "$TMP/full.log" 2>&1)
rc=$?
if [[ $rc -eq 1 ]] && grep -q "cannot write '$TMP/full/checkpoint.pt': File too large" "$TMP/full.log" &&
   grep -q '"status": "failed"' "$TMP/full/summary.json" && grep -q '"steps_run": 100' "$TMP/full/summary.json" &&
   [[ $(tail -n 1 "$TMP/full/metrics.csv" | cut -d, -f1) == 100 ]] && ! ls "$TMP/full" | grep -q tmp; then
  pass=$((pass + 1))
else
  echo "FAIL: disk full: exit $rc"; cat "$TMP/full.log"; fail=$((fail + 1))
fi
# a grid killed (SIGKILL, grid and workers) at several moments resumes with no finished
# cell lost or duplicated and the same results as a grid never killed
cat > "$TMP/kill.toml" <<'TOML'
name = "kill"
datasets = ["synthetic"]
models = ["densenet-ds"]
inits = ["he", "lion-dg"]
seeds = [1, 2]
[model]
growth_rate = 4
block_layers = [1, 1, 1]
[synthetic]
train_size = 128
test_size = 64
image_size = 12
classes = 4
[train]
steps = 600
batch_size = 16
grad_every = 5
eval_every = 200
TOML
expect_exit 0 "" -- "$LIONDG" grid --config "$TMP/kill.toml" --jobs 1 --out "$TMP/kg-whole" --quiet
for delay in 1.0 3.5 0.2 2.5 6.0; do
  setsid "$LIONDG" grid --config "$TMP/kill.toml" --jobs 1 --out "$TMP/kg" --quiet > /dev/null 2>&1 &
  g=$!
  sleep $delay
  kill -9 -- -$g 2> /dev/null
  wait $g 2> /dev/null
done
expect_exit 0 "" -- "$LIONDG" grid --config "$TMP/kill.toml" --jobs 1 --out "$TMP/kg" --quiet
if /usr/bin/python3 - "$TMP/kg-whole/results.jsonl" "$TMP/kg/results.jsonl" <<'PY'
import json, sys
def cells(path):
    out = {}
    for line in open(path):
        try:
            j = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if j["status"] == "completed":
            assert j["key"] not in out, "duplicated finished cell " + j["key"]
            out[j["key"]] = (j["summary"]["val_acc"], j["summary"]["steps_to_target"], j["summary"]["final_train_window_acc"])
    return out
whole, killed = cells(sys.argv[1]), cells(sys.argv[2])
assert len(whole) == 4 and whole == killed, (whole, killed)
PY
then pass=$((pass + 1)); else echo "FAIL: a grid killed and resumed differs from one never killed"; fail=$((fail + 1)); fi
expect_exit 0 "| synthetic | densenet-ds | lion-dg |" -- cat "$TMP/kg/report.md"

echo "cli: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
