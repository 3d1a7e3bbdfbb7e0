#!/usr/bin/env bash
# A comparison grid over several machines without a scheduler: each machine runs
# one shard into its own directory on a shared file system; then merge.
#
#   # on machine i of N (i = 1..N):
#   bash scripts/grid_shards.sh run paper /shared/grids/paper i N
#   # anywhere, when all are done:
#   bash scripts/grid_shards.sh merge paper /shared/grids/paper
#
# Resume after a machine dies: run the same `run` command again (on it or another
# machine); finished cells are skipped.
set -euo pipefail
LIONDG=${LIONDG:-liondg}
cmd=${1:?usage: grid_shards.sh run PRESET ROOT I N | merge PRESET ROOT}
PRESET=${2:?preset or config.toml}
ROOT=${3:?grid root directory}
if [[ $PRESET == *.toml ]]; then SPEC=(--config "$PRESET"); else SPEC=(--preset "$PRESET"); fi
case $cmd in
  run)
    I=${4:?shard index (1-based)}
    N=${5:?shard count}
    exec "$LIONDG" grid "${SPEC[@]}" --shard "$I/$N" --jobs "${JOBS:-1}" --out "$ROOT/shard-$I" --no-report
    ;;
  merge)
    exec "$LIONDG" grid merge "$ROOT"/shard-* --out "$ROOT/merged"
    ;;
  *)
    echo "usage: grid_shards.sh run PRESET ROOT I N | merge PRESET ROOT" >&2
    exit 2
    ;;
esac
