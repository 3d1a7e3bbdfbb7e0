#!/usr/bin/env bash
# Table-driven bad-input test: every row is one malformed input or flag, the exit code
# it must give (1 data/runtime, 2 usage) and a piece of the message (naming the file or
# flag and what was expected). No row may crash (exit >= 128), hang (60 s bound per
# row) or succeed. docs/errors.md lists the same table.
# Usage: bad_inputs_test.sh PATH/TO/liondg
set -u
LIONDG=${1:?usage: bad_inputs_test.sh PATH/TO/liondg}
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export LIONDG_CACHE_DIR="$TMP/cache"
B="$TMP/bad"
if ! /usr/bin/python3 "$HERE/make_bad_inputs.py" "$B"; then
  echo "FAIL: make_bad_inputs.py"; exit 1
fi
rows=0 fail=0
ROW_ENV=()  # environment variables of the next rows
# row CODE NEEDLE -- ARGS...: liondg ARGS must exit CODE with NEEDLE in its output.
row() {
  local want=$1 needle=$2
  shift 3
  rows=$((rows + 1))
  local out rc
  out=$(env "${ROW_ENV[@]}" timeout 60 "$LIONDG" "$@" 2>&1)
  rc=$?
  if [[ $rc -ne $want || $out != *"$needle"* ]]; then
    echo "FAIL row $rows: exit $rc (expected $want), output lacks '$needle' or differs: liondg $*"
    echo "$out" | tail -3
    fail=$((fail + 1))
  fi
}
T=(--quiet --steps 1 --no-save-model --threads 1)
o() { echo "$TMP/out$rows"; }

# ---- files: IDX (MNIST layout)
row 1 "is not an IDX file: bad magic number (first bytes 0x12 0x34" -- train --dataset mnist --data "$B/idx-magic" "${T[@]}" --out "$(o)"
row 1 "truncated IDX file: header declares 3136 data bytes, file holds 3036" -- train --dataset mnist --data "$B/idx-truncated" "${T[@]}" --out "$(o)"
row 1 "oversized IDX file: header declares 3136 data bytes, file holds 3186" -- train --dataset mnist --data "$B/idx-oversized" "${T[@]}" --out "$(o)"
row 1 "train-labels-idx1-ubyte': label 12 out of range; expected labels in [0, 10)" -- train --dataset mnist --data "$B/idx-label-range" "${T[@]}" --out "$(o)"
row 1 "holds 4 images but" -- train --dataset mnist --data "$B/idx-count" "${T[@]}" --out "$(o)"
row 1 "IDX dimension 1 is 0" -- train --dataset mnist --data "$B/idx-zero-dim" "${T[@]}" --out "$(o)"
# ---- files: CIFAR-10 binary
row 1 "data_batch_1.bin" -- train --dataset cifar10 --data "$B/cifar-truncated" "${T[@]}" --out "$(o)"
row 1 "label 17 out of range" -- train --dataset cifar10 --data "$B/cifar-label-range" "${T[@]}" --out "$(o)"
row 1 "data_batch_1.bin" -- train --dataset cifar10 --data "$B/cifar-oversized" "${T[@]}" --out "$(o)"
row 1 "holds CIFAR-10 binary files" -- train --dataset cifar100 --data "$B/cifar-label-range" "${T[@]}" --out "$(o)"
# ---- image folders and archives
row 1 "class folder '$B/folder-empty-class/train/b' holds no images" -- data info "$B/folder-empty-class" --no-cache
row 1 "notes.txt' is not an image file; expected .jpg, .jpeg or .png" -- data info "$B/folder-mixed" --no-cache
row 1 "train/b/0001.png' is 8x9 but" -- data info "$B/folder-sizes" --no-cache
row 1 "cannot decode image '$B/folder-bad-png/train/a/0001.png': invalid or truncated PNG" -- data info "$B/folder-bad-png" --no-cache
row 1 "cannot decode image '$B/folder-bad-jpeg/train/b/0002.jpg': corrupt or truncated JPEG" -- data info "$B/folder-bad-jpeg" --no-cache
row 1 "member '/etc/evil.png' has an absolute path" -- data info "$B/absolute.tar.gz" --no-cache
row 1 "member 'train/../../evil.png' has a '..' component" -- data info "$B/dotdot.tar.gz" --no-cache
row 1 "cannot open archive '$B/truncated.tar.gz'" -- data info "$B/truncated.tar.gz" --no-cache
row 1 "/nonexistent/data" -- train --dataset cifar10 --data /nonexistent/data "${T[@]}" --out "$(o)"
# ---- configs
row 2 "bad.toml' line 3, column 11" -- grid --config "$B/bad.toml" --out "$(o)"
row 2 "unknown option 'train.stepz'" -- grid --config "$B/unknown-key.toml" --out "$(o)"
row 2 "seeds must be non-negative integers, got -4" -- grid --config "$B/neg-seed.toml" --out "$(o)"
row 1 "missing.toml' does not exist" -- grid --config "$B/missing.toml" --out "$(o)"
# ---- flags: unknown, contradictory, negative or zero sizes, out-of-range seeds
row 2 "The following argument was not expected: --frobnicate" -- train --frobnicate
row 2 "--overwrite excludes --resume" -- train --resume --overwrite
row 2 "--preset excludes --config" -- grid --preset smoke --config "$B/bad.toml"
row 2 "--batch-size: Value -3 not in range" -- train --batch-size -3
row 2 "--steps: Value 0 not in range" -- train --steps 0
row 2 "--synthetic-image-size: Value 2 not in range" -- train --dataset synthetic --synthetic-image-size 2
row 2 "--resize '0x5'" -- data info "$B/folder-sizes" --resize 0x5
row 2 "--seed: expected an integer in [0, 18446744073709551615], got '-1'" -- train --seed -1
row 2 "got '18446744073709551616'" -- train --seed 18446744073709551616
row 2 "--shard expects I/N" -- grid --preset smoke --shard 0/2 --out "$(o)"
row 2 "--val-split" -- train --dataset synthetic --synthetic-train-size 64 --val-split 64 "${T[@]}" --out "$(o)"
row 2 "--lr: Value 0 not in range" -- train --lr 0
# ---- environment and state
ROW_ENV=(WORLD_SIZE=2 RANK=3)
row 2 "environment variable RANK=3 must be in [0, WORLD_SIZE=2)" -- train --dataset synthetic "${T[@]}" --out "$(o)"
ROW_ENV=(WORLD_SIZE=2 RANK=0 MASTER_PORT=99999)
row 2 "MASTER_PORT=99999 must be a TCP port" -- train --dataset synthetic "${T[@]}" --out "$(o)"
ROW_ENV=()
mkdir -p "$TMP/badckpt" && printf 'not a checkpoint' > "$TMP/badckpt/checkpoint.pt"
row 1 "badckpt/checkpoint.pt' is not a readable liondg checkpoint" -- train --dataset synthetic "${T[@]}" --out "$TMP/badckpt" --resume
row 2 "holds no checkpoint" -- train --dataset synthetic "${T[@]}" --out "$TMP/nockpt" --resume
touch "$TMP/afile"
row 1 "cannot be created" -- train --dataset synthetic "${T[@]}" --out "$TMP/afile/run"

echo "bad inputs: $rows rows, $fail failed"
[[ $rows -ge 20 && $fail -eq 0 ]]
