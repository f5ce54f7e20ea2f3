#!/bin/bash
# A training-set build killed mid-way (SIGKILL once it has written N chunk files), then rerun: the
# finished set must be left as it was by the kill and be byte-identical after the rerun.
#
#   bash benchmarks/killed_training_set.sh DATA_DIR [N]
#
# DATA_DIR: a prepared data dir with a finished training set (benchmarks/training_set.py --prepare,
# then one build); N: chunk files written before the kill (default 12). Prints each step and its
# time; the figures go into benchmarks/RESULTS.md by hand.
set -u
data=${1:?usage: killed_training_set.sh DATA_DIR [N]}
n=${2:-12}
cd "$(dirname "$0")/.."
export CTR_DATA_DIR=$data
set_dir=$data/datasets/training_set.parquet
build() { .venv/bin/python -c "
from models import pipeline
from models.settings import get_settings
print(pipeline.build_training_set(get_settings()))
"; }
sums=$(mktemp)
(cd "$set_dir" && sha256sum -- * > "$sums")
echo "finished set: $(ls "$set_dir" | wc -l) files; load $(cut -d' ' -f1-3 /proc/loadavg)"
build > "$data/killed-build.log" 2>&1 &
pid=$!
until [ "$(ls "$set_dir.partial" 2>/dev/null | wc -l)" -ge "$n" ]; do sleep 1; done
kill -9 "$(pgrep -P $pid)" "$pid" 2>/dev/null
wait $pid 2>/dev/null
echo "killed with $(ls "$set_dir.partial" | wc -l) chunk files written"
(cd "$set_dir" && sha256sum --quiet -c "$sums") && echo "after the kill: the finished set is untouched"
t0=$(date +%s)
build > "$data/rerun-build.log" 2>&1 || { echo "rerun failed, see $data/rerun-build.log"; exit 1; }
echo "rerun: $(( $(date +%s) - t0 )) s, load $(cut -d' ' -f1-3 /proc/loadavg); partial folder left: $(ls -d "$set_dir.partial" 2>/dev/null | wc -l)"
(cd "$set_dir" && sha256sum --quiet -c "$sums") && echo "after the rerun: byte-identical ($(ls "$set_dir" | wc -l) files)"
rm -f "$sums"
