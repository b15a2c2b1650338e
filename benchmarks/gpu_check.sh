#!/usr/bin/env bash
# One prepared run on a GPU machine (no network): proves the CUDA path and records the figures.
#   bash benchmarks/gpu_check.sh            (writes logs to $OUT when set, else to ./gpu-check/)
# Expects the faiss-cpu wheel for the machine's Python in .whl/ when faiss is not installed there.
set -uo pipefail
OUT=${OUT:-gpu-check}; mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! python3 -c "import faiss" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import faiss, timm, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
print("timm", timm.__version__, "faiss", faiss.__version__, "faiss GPUs", getattr(faiss, "get_num_gpus", lambda: 0)())
PY
start=$(date +%s)
timeout 100 python3 benchmarks/train_throughput.py --images 600 --workers 14 --epochs 2 2>&1 | grep -v Warning | tee "$OUT/train_throughput.txt"
echo "train_throughput: $(( $(date +%s) - start )) s"
timeout 30 python3 benchmarks/data.py --device cuda --rounds 1 --images 16 --samples 64 2>&1 | tail -25 | tee "$OUT/data.txt"
