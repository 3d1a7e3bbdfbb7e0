#!/usr/bin/env bash
# GPU measurements as run on the lent H100 (see bench/gpu/README.md): build against the pip
# torch, CUDA tests, step/eval vs the PyTorch peer, one 3000-step CIFAR-10 run, the Table 1
# grid under MPS. Needs OUT (output folder) and DATA (folder with the CIFAR .tar.gz files).
set -o pipefail
export LIONDG_EXTRA_PREFIX=$PWD/.devdeps LIONDG_GTEST_SRC=$PWD/.devdeps/src/googletest
SECONDS=0
bash bench/gpu/build.sh > $OUT/build.log 2>&1 || { grep -E "error|Error" -A3 $OUT/build.log | head -60; exit 1; }
echo "build: ${SECONDS}s"
B=build-cuda; L=$B/liondg
OMP_NUM_THREADS=1 timeout 200 $B/tests/liondg_tests --gtest_filter='Resident*' > $OUT/tests.log 2>&1; echo "tests rc=$?"; grep -E "OK|FAIL|SKIP|Failure|Expected|Which" $OUT/tests.log | head -30
for m in densenet-ds resnet-ds; do
  $L bench step --device cuda --model $m --warmup 20 --steps 300 --json > $OUT/ours_step_$m.json; python3 bench/peer.py step --device cuda --model $m --warmup 20 --steps 300 --json > $OUT/peer_step_$m.json
  $L bench eval --device cuda --model $m --batch-size 1000 --warmup 5 --steps 30 --json > $OUT/ours_eval_$m.json; python3 bench/peer.py eval --device cuda --model $m --batch-size 1000 --warmup 5 --steps 30 --json > $OUT/peer_eval_$m.json
done
python3 -c "
import json
for k in ['step','eval']:
  for m in ['densenet-ds','resnet-ds']:
    o=json.load(open('$OUT/ours_%s_%s.json'%(k,m))); p=json.load(open('$OUT/peer_%s_%s.json'%(k,m))); print(k,m,'ours',round(o['median_s']*1e3,3),'ms peer',round(p['median_s']*1e3,3),'ms ratio',round(o['median_s']/p['median_s'],3))"
T="--device cuda --dataset cifar10 --data ${DATA:-.gpudata}/cifar10-jpeg.tar.gz --model densenet-ds --init lion-dg --steps 3000 --overwrite"
/usr/bin/time -v $L train $T --out /tmp/r1 > $OUT/train1.log 2>&1; echo "train rc=$?"; grep -E "steps to target|final val|wall time|Maximum resident" $OUT/train1.log
python3 -c "import json; s=json.load(open('/tmp/r1/summary.json')); print({k:s.get(k) for k in ['train_seconds','eval_seconds','wall_seconds','steps_to_target']})"
$L train --device cuda --dataset cifar100 --data ${DATA:-.gpudata}/cifar100-jpeg.tar.gz --steps 5 --eval-limit 100 --out /tmp/warm100 > /dev/null 2>&1
nvidia-cuda-mps-control -d && echo "MPS started" || echo "no MPS"
echo "before grid: ${SECONDS}s"; G0=$SECONDS
timeout 420 $L grid --config bench/gpu/table1.toml --data cifar10=${DATA:-.gpudata}/cifar10-jpeg.tar.gz --data cifar100=${DATA:-.gpudata}/cifar100-jpeg.tar.gz --out /tmp/g --jobs 12 --device cuda --quiet > $OUT/grid.log 2>&1; echo "grid rc=$? in $((SECONDS-G0))s"
tail -5 $OUT/grid.log; wc -l /tmp/g/results.jsonl; cp /tmp/g/results.jsonl $OUT/ 2>/dev/null; ls /tmp/g
echo quit | nvidia-cuda-mps-control 2>/dev/null; echo "total ${SECONDS}s"
