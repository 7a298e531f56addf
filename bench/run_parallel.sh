#!/usr/bin/env bash
# Run several bench/compare_presets.py runs at once on one GPU machine (tiny models leave the GPU mostly idle,
# so parallel runs multiply throughput), then pack the result files and logs into $OUT/results.tgz.
# Each line of the run file holds the arguments of one compare_presets.py call.
#   bash bench/run_parallel.sh bench/plans/ablations_1_8.txt
# Runs longer than one command may last: DEADLINE_S=550 stops every run after 550 s; calling the script again
# on the same machine resumes each run from its last checkpoint (states and results live under BENCH_DIR).
set -u
RUN_FILE=$1
BENCH_DIR=${BENCH_DIR:-outputs/parallel}
OUT=${OUT:-$BENCH_DIR}
mkdir -p "$BENCH_DIR/results" "$BENCH_DIR/logs" "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
i=0
while read -r line; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    i=$((i + 1))
    eval "timeout ${DEADLINE_S:-0} python3 bench/compare_presets.py --camvid .camvid240 \
        --results_dir $BENCH_DIR/results --output_dir $BENCH_DIR/states $line" >> "$BENCH_DIR/logs/run$i.log" 2>&1 &
done < "$RUN_FILE"
wait
grep -h "s/step" "$BENCH_DIR"/logs/*.log
tar -czf "$OUT/results.tgz" -C "$BENCH_DIR" results logs
