#!/usr/bin/env bash
# One script for a lent GPU machine (H100/H200, no network). Run from the repository root:
#   bash benchmarks/gpu_check.sh
# It makes a venv with the CPU-built project deps (torch from the machine's own CUDA build if present),
# tries flash-attn from a carried wheel (wheels/flash_attn-*.whl) if one exists, then runs
# python -m benchmarks.gpu_check (random-weight 3B architecture: SDPA vs FA2, pages/s with and without the
# no-mask fast path, one device vs a pool over every GPU; < 8 minutes) -> results/gpu/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! "$PY" -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  "$PY" -m venv .venv-gpu
  PY=.venv-gpu/bin/python
  "$PY" -m pip install -q torch transformers pillow numpy safetensors tqdm tokenizers pyyaml || true
fi
"$PY" -m pip install -q --no-deps -e . || true
ls wheels/flash_attn-*.whl >/dev/null 2>&1 && "$PY" -m pip install -q --no-deps wheels/flash_attn-*.whl || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 480 "$PY" -m benchmarks.gpu_check "$@"

# --- vision attention (issue 25): SDPA calls and time per vision forward, stock per-window loop vs batched
# vs block-diagonal mask, random-weight towers (width 64 and the 3B width; 1 and 16 pages), bf16, < 2 minutes
# -> results/gpu/vision_attention.json. Pages/s of the same switch end to end are in gpu_check.json above.
timeout 240 "$PY" -m benchmarks.vision_attention --device cuda --out results/gpu/vision_attention.json
