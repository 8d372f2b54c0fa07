#!/usr/bin/env bash
# One prepared run for a lent GPU machine (one H100/H200, no network), under 10 minutes. From the repository root:
#   bash benchmarks/gpu_check.sh                        # every section
#   SECTIONS="parity encode" bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --dry-run              # CPU, tiny architecture: checks this script (tests/benchmarks)
# Everything lands in $OUT (default results/gpu/): one <section>.log per section, the sections' JSON / JUnit files,
# env.txt, and summary.txt (each section: ok / failed rc / timed out, and its seconds). Exit status: 0 iff all ok.
#
# Sections: one shell function section_<name> each, run in the order of $SECTIONS under its own time limit
# (LIMIT_<name>, seconds). To add one (e.g. a vision-attention check), write section_<name>, give it a limit below
# and add its name to the default SECTIONS: nothing else changes.
#   env      nvidia-smi, versions of python / torch / transformers / flash_attn / deepspeed, git revision
#   parity   the real-kernel tests: pytest -m gpu tests/gpu (flash-attention-2 vs SDPA on CUDA)
#   encode   python -m benchmarks.gpu_check: 3B architecture, random weights, pages of 1,024 visual tokens: pages/s,
#            tokens/s, MFU, peak memory per backend, FA2-vs-SDPA parity, bf16 vs fp32, mask vs fast path, device pool
#   cl_step  one CL step of the 3B architecture under DeepSpeed ZeRO-3 + GradCache on one GPU (optimizer states
#            offloaded to the CPU), through accelerate launch + configs/accelerate/deepspeed_zero3.yaml
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi
OUT=${OUT:-results/gpu}
SECTIONS=${SECTIONS:-"env parity encode cl_step"}
LIMIT_env=60 LIMIT_parity=90 LIMIT_encode=210 LIMIT_cl_step=240
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

pick_python() {  # a Python whose torch sees CUDA (dry run: the project's .venv)
  if [[ $DRY == 1 ]]; then echo "${PY:-.venv/bin/python}"; return; fi
  for py in ${PY:-} .venv-gpu/bin/python python3; do
    if "$py" -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then echo "$py"; return; fi
  done
  python3 -m venv --system-site-packages .venv-gpu >&2 && echo .venv-gpu/bin/python
}
PY=$(pick_python)
if [[ $DRY == 1 ]]; then
  export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
else  # the project itself, and a carried flash-attn wheel; the machine's own torch / transformers stay
  "$PY" -m pip install -q --no-deps -e . >/dev/null 2>&1 || true
  if ls wheels/flash_attn-*.whl >/dev/null 2>&1; then "$PY" -m pip install -q --no-deps wheels/flash_attn-*.whl || true; fi
fi

section_env() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "transformers", "accelerate", "deepspeed", "flash_attn"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # noqa: BLE001
        print(name, "unavailable:", type(exc).__name__)
import torch
print("cuda", torch.version.cuda, "devices", torch.cuda.device_count())
EOF
  git rev-parse HEAD 2>/dev/null || true
}

section_parity() {
  "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu --junitxml="$OUT/parity_junit.xml" -rA
}

section_encode() {
  if [[ $DRY == 1 ]]; then
    "$PY" -m benchmarks.gpu_check --dry-run --queries 4 --pages 2 --page-side 112 --out "$OUT/gpu_check.json"
  else
    "$PY" -m benchmarks.gpu_check --out "$OUT/gpu_check.json"
  fi
}

section_cl_step() {
  local dry=() mp=bf16
  if [[ $DRY == 1 ]]; then dry=(--dry-run --queries 4 --page-side 112 --chunk-size 2); mp=no; fi
  "$PY" -m accelerate.commands.launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 1 \
    --mixed_precision "$mp" --offload_optimizer_device cpu --main_process_port "${PORT:-29517}" \
    -m benchmarks.gpu_cl_step "${dry[@]}" --out "$OUT/cl_step.json"
}

status=0
: > "$OUT/summary.txt"
for name in $SECTIONS; do
  limit_var="LIMIT_$name"
  limit=${!limit_var:-120}
  start=$(date +%s)
  if [[ $name == env ]]; then
    timeout "$limit" bash -c "$(declare -f section_env); PY=$PY section_env" > "$OUT/env.txt" 2>&1
  else
    timeout "$limit" bash -c "$(declare -f "section_$name"); PY=$PY OUT=$OUT DRY=$DRY section_$name" \
      > "$OUT/$name.log" 2>&1
  fi
  rc=$?
  secs=$(( $(date +%s) - start ))
  case $rc in
    0) state=ok ;;
    124) state="timed out after ${limit}s"; status=1 ;;
    *) state="failed rc=$rc"; status=1 ;;
  esac
  echo "$name: $state (${secs}s)" | tee -a "$OUT/summary.txt"
done
exit $status
