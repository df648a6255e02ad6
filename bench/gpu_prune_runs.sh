#!/usr/bin/env bash
# The training half of BENCHMARKS.md's pruning numbers, on the lent GPU machine, in parallel lanes:
#   ab: edgecompress's candidates at yolov8n-bccd -35% FLOPs;   c: the peer (Torch-Pruning's example recipe) at
#   every sweep point, then the best candidate at the other points;   de: one-epoch fine-tuning of the unpruned
#   model under several settings, and the 70%-in-6-steps iterative experiment (magnitude, group-regularised).
# Results: $OUT/results.jsonl, lane logs, and the sweep's checkpoints in tars; latency (OpenVINO FP32) is then
# measured on the CPU machine by `bench/prune_sweep.py` on the same --out, which reuses the finished points.
# Needs what that machine lacks (see bench/gpu_setup.sh).
set -u
source bench/gpu_setup.sh

point() {  # log tar name:flops recipe: one sweep point; its checkpoint goes into the tar ('-' for none)
  "${S[@]}" --points "$3" --recipes "$4" >> "$OUT/$1.log" 2>&1
  local name=${3%%:*} flops=${3##*:}
  [ "$2" = - ] || tar rf "$OUT/$2" "$R/$name-$(python3 -c "print(round($flops * 100))")-$4/model.pt"
}

(for r in ec-sensitivity ec-taylor-sensitivity; do point ab - yolov8n-bccd:0.35 $r; done) & A=$!
(for r in ec-taylor ec-taylor-gentle ec-global; do point ab - yolov8n-bccd:0.35 $r; done) & B=$!
(for r in ec-taylor-adamw ec-distill ec-depth; do point ab - yolov8n-bccd:0.35 $r; done) & C=$!
(point c peer1.tar yolov8n-bccd:0.35 tp-example; point c peer1.tar yolov8n-bccd:0.20 tp-example
 point c peer2.tar yolov8n-bccd:0.50 tp-example; point c peer2.tar yolo11n-bccd:0.35 tp-example) &
("${S[@]}" --finetune-check --ft optimizer=AdamW,lr0=1e-4 --ft optimizer=AdamW,lr0=1e-5 \
   --ft optimizer=SGD,lr0=1e-4 --ft optimizer=SGD,lr0=1e-9 \
   --ft optimizer=auto,lr0=0.01,lrf=0.01,warmup_epochs=3,close_mosaic=10 --ft optimizer=AdamW,lr0=1e-4,distill=6.0
 ) >> "$OUT/de.log" 2>&1 &
"${S[@]}" --finetune-check --ft optimizer=AdamW,lr0=1e-4,seed=1 --ft optimizer=AdamW,lr0=1e-4,seed=2 \
   --ft optimizer=SGD,lr0=1e-9,seed=1 --ft optimizer=AdamW,lr0=1e-5,seed=1 >> "$OUT/de.log" 2>&1 &
for c in l2 group_norm; do "${S[@]}" --iterative $c --iterative-finetune adamw >> "$OUT/de.log" 2>&1 & done
"${S[@]}" --iterative l2 --iterative-finetune peer >> "$OUT/de.log" 2>&1 &
wait $A $B $C
best=$(python3 -c "import sys; sys.path.insert(0, 'bench'); import prune_sweep as p; from pathlib import Path
print(p.best_recipe(Path('$R')))" 2>> "$OUT/c.log")
echo "best candidate: $best" >> "$OUT/c.log"
tar rf "$OUT/best1.tar" "$R/yolov8n-bccd-35-$best/model.pt"
(point c best1.tar yolov8n-bccd:0.20 "$best"; point c best2.tar yolov8n-bccd:0.50 "$best"
 point c best2.tar yolo11n-bccd:0.35 "$best") &
wait
