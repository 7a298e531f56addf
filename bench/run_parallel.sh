#!/usr/bin/env bash
# Run several bench/compare_presets.py runs at once on one GPU machine (tiny models leave the GPU mostly idle,
# so parallel runs multiply throughput), then pack the result files and logs into $OUT/results.tgz.
# Each line of the run file holds the arguments of one compare_presets.py call.
#   bash bench/run_parallel.sh bench/plans/ablations_1_8.txt
set -u
RUN_FILE=$1
OUT=${OUT:-outputs/parallel}
mkdir -p "$OUT/results" "$OUT/logs"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
i=0
while read -r line; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    i=$((i + 1))
    eval "python3 bench/compare_presets.py --camvid .camvid240 --results_dir $OUT/results --output_dir /tmp/bench_out $line" \
        > "$OUT/logs/run$i.log" 2>&1 &
done < "$RUN_FILE"
wait
grep -h "s/step" "$OUT"/logs/*.log
tar -czf "$OUT/results.tgz" -C "$OUT" results logs && rm -rf "$OUT/results" "$OUT/logs"
