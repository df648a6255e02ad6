#!/usr/bin/env bash
# Fine-tuning schedules on the lent GPU machine, one run per lane.
#   round 1: the one-epoch check of the unpruned yolov8n-bccd with the fine-tune defaults (schedule auto, which
#            preserves an intact model), three seeds; yolo11n-bccd at -35% FLOPs (the best recipe's pruning)
#            under variations of the recover schedule;
#   round 2: lower AdamW rates (with the recover schedule's warm-up) at yolo11n-bccd and yolov8n-bccd -35%.
# Usage: bash bench/gpu_finetune_runs.sh 1|2. Results: $OUT/results.jsonl and lanes.log.
# Needs what that machine lacks (see bench/gpu_setup.sh).
set -u
source bench/gpu_setup.sh
lane() { "${S[@]}" "$@" >> "$OUT/lanes.log" 2>&1; }
if [ "$1" = 1 ]; then
  lane --finetune-check --ft seed=0 --ft seed=1 --ft seed=2 &
  for ft in distill=6.0 optimizer=AdamW,lr0=5e-4 optimizer=SGD,lr0=0.01 optimizer=AdamW,lr0=2e-3; do
    lane --points yolo11n-bccd:0.35 --recipes ec-taylor-sensitivity --ft $ft &
  done
else
  for ft in optimizer=AdamW,lr0=2e-4 optimizer=AdamW,lr0=1e-4 optimizer=AdamW,lr0=5e-4,seed=1; do
    lane --points yolo11n-bccd:0.35 --recipes ec-taylor-sensitivity --ft $ft &
  done
  for ft in optimizer=AdamW,lr0=5e-4 optimizer=AdamW,lr0=2e-4; do
    lane --points yolov8n-bccd:0.35 --recipes ec-taylor-sensitivity --ft $ft &
  done
fi
wait
