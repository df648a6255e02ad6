# Sourced by the bench/gpu_*.sh scripts on the lent GPU machine: installs what it lacks from .whl (ultralytics,
# torch-pruning, ultralytics-thop wheels) and points edgecompress at .gpu/shared (a copy of ../shared holding bccd,
# yolov8n-bccd.pt and yolo11n-bccd.pt); S is the sweep command, writing to $R and appending to $OUT/results.jsonl.
OUT=${OUT:-bench/results/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD EDGECOMPRESS_SHARED=$PWD/.gpu/shared YOLO_OFFLINE=1 OMP_NUM_THREADS=2 \
       PYTHONUNBUFFERED=1
R=bench/results/prune_sweep_gpu
S=(python3 bench/prune_sweep.py --device 0 --workers 2 --no-latency --out "$R" --jsonl "$OUT/results.jsonl")
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; } >> "$OUT/c.log"
