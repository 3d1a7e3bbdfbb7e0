#!/usr/bin/env bash
# The Table 1 grid (bench/gpu/table1.toml) on one GPU with 12 concurrent workers (MPS when
# available), stopped after 215 s; prints the finished cells. OUT and DATA as in run_bench.sh.
set -o pipefail
export LIONDG_EXTRA_PREFIX=$PWD/.devdeps
SECONDS=0
bash bench/gpu/build.sh -DLIONDG_BUILD_TESTS=OFF > $OUT/build.log 2>&1 || { grep -E "error|Error" -A3 $OUT/build.log | head -40; exit 1; }
echo "build: ${SECONDS}s"
L=build-cuda/liondg
for d in cifar10 cifar100; do $L train --device cuda --dataset $d --data ${DATA:-.gpudata}/$d-jpeg.tar.gz --steps 5 --eval-limit 100 --out /tmp/warm$d > /dev/null 2>&1; done
echo "caches: ${SECONDS}s"
nvidia-cuda-mps-control -d && echo "MPS started" || echo "no MPS"
G0=$SECONDS
timeout -s INT 215 $L grid --config bench/gpu/table1.toml --data cifar10=${DATA:-.gpudata}/cifar10-jpeg.tar.gz --data cifar100=${DATA:-.gpudata}/cifar100-jpeg.tar.gz --out /tmp/g --jobs 12 --device cuda --no-report > $OUT/grid.log 2>&1; echo "grid rc=$? after $((SECONDS-G0))s"
python3 - <<'PY'
import json
rows=[json.loads(l) for l in open('/tmp/g/results.jsonl') if l.strip()]
print(len(rows), "cells finished:", sorted(set(r.get('status') for r in rows)))
for r in rows:
    s=r.get('summary',{}); fe={'main_acc': s.get('val_acc')}
    print(r['key'], r.get('status'), 'wall', round(s.get('wall_seconds',-1),1), 'train', round(s.get('train_seconds',-1),1), 'target', s.get('steps_to_target'), 'val', fe.get('main_acc'), r.get('error','')[:100])
PY
cp /tmp/g/results.jsonl $OUT/; tail -3 $OUT/grid.log
echo quit | nvidia-cuda-mps-control 2>/dev/null; echo "total ${SECONDS}s"
