#!/usr/bin/env bash
# The GPU check, on one GPU, within one 10-minute call. Two suites (SUITE):
#
#   compare (default): this project's train step next to the PyTorch reference's
#     (benchmarks/compare_torch.py, both step kinds, PyTorch's two APRN forms) for ResNet-101
#     at 224x224 (batch 128) and 112x112 (batch 256), bfloat16 and float32; and the input
#     pipeline (benchmarks/input_pipeline.py) at 224x224 with JPEG decoding on the host's
#     cores. Without a CUDA PyTorch the comparisons run this project alone
#     (--frameworks=jax), noted in RESULTS.
#   jax: the earlier check: train step (baseline and APRN, benchmarks/train_step.py) and
#     inference of the exported recognizer at 224 and 112, bfloat16 and float32, and the
#     identity classifier at 1M and 10M identities.
#
#   bash benchmarks/gpu_check.sh [RESULTS]   # default: $OUT/gpu_check.jsonl, else ./gpu_check.jsonl
#
# Appends one JSON line per run to RESULTS and the scripts' output to RESULTS with .log for
# .jsonl. Environment:
#   PYTHON    the interpreter (default python3).
#   WHEELS    a folder of wheels for packages the interpreter lacks (e.g. ml_collections on a
#             machine without internet); installed offline into a temporary folder. Without
#             it, a missing package is installed with pip from requirements.txt.
#   BUDGET_S  seconds for all runs (default 540 for compare, 480 for jax). A run is started
#             only while at least its expected time is left, and stopped when the budget is
#             spent; either way a JSON line says so, and the runs before it stay in RESULTS.
#   TORCH_COMPILE=1  adds --torch_compile to the first comparison (its compile takes minutes).
set -uo pipefail
cd "$(dirname "$0")/.."

suite=${SUITE:-compare}
[[ $suite == compare || $suite == jax ]] || { echo "SUITE=$suite: compare or jax" >&2; exit 2; }
results=${1:-${OUT:-.}/gpu_check.jsonl}
log=${results%.jsonl}.log
python=${PYTHON:-python3}
if [[ $suite == compare ]]; then budget_s=${BUDGET_S:-540}; else budget_s=${BUDGET_S:-480}; fi
mkdir -p "$(dirname "$results")"

note() {  # Appends one JSON line {"gpu_check": $1, ...$2} to the results.
  echo "{\"gpu_check\": \"$1\", \"suite\": \"$suite\"${2:+, $2}}" | tee -a "$results"
}

if ! "$python" -c "import absl, flax, jax, ml_collections, optax" 2>>"$log"; then
  if [[ -n "${WHEELS:-}" ]]; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" \
      "$WHEELS"/*.whl >>"$log" 2>&1 || { note "failed" '"step": "offline wheels"'; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    "$python" -m pip install -q -r requirements.txt >>"$log" 2>&1 \
      || { note "failed" '"step": "pip install -r requirements.txt"'; exit 1; }
  fi
fi
if [[ $("$python" -c "import jax; print(jax.default_backend())" 2>>"$log") != gpu ]]; then
  "$python" -m pip install -q "jax[cuda13]==0.10.2" >>"$log" 2>&1 \
    || { note "failed" '"step": "pip install jax[cuda13]==0.10.2: no GPU backend"'; exit 1; }
fi
versions=$("$python" -c "
import json, flax, jax, optax
try:
  import torch
  torch_version, cuda = torch.__version__, torch.cuda.is_available()
except ImportError:
  torch_version, cuda = None, False
print(json.dumps(dict(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
                      torch=torch_version, torch_cuda=cuda,
                      backend=jax.default_backend(), device=jax.devices()[0].device_kind)))" \
  2>>"$log")
[[ $versions == *'"backend": "gpu"'* ]] || { note "failed" '"step": "no GPU backend"'; exit 1; }
note "environment" "\"versions\": $versions"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$log" 2>&1

run() {  # run NAME EXPECTED_S SCRIPT ARGS...: one benchmark, if the budget allows.
  local name=$1 expected_s=$2 left_s=$((budget_s - SECONDS))
  shift 2
  if ((left_s < expected_s)); then
    note "skipped" "\"run\": \"$name\", \"seconds_left\": $left_s"
    return
  fi
  echo "== $name" >>"$log"
  local start_s=$SECONDS
  timeout "$left_s" "$python" "$@" --out="$results" >>"$log" 2>&1
  local status=$?
  if ((status != 0)); then
    note "failed" "\"run\": \"$name\", \"exit_status\": $status, \"log\": \"$log\""
  else
    echo "== $name done in $((SECONDS - start_s)) s" >>"$log"
  fi
}

r101=(--config=configs/resnet101.py)
at112=(--config.data.image_size=112 --config.data.crop_size=112)

if [[ $suite == compare ]]; then
  # Both frameworks, alternating: 3 rounds of 5 timed steps of each kind after 2 warm-ups.
  cmp=(benchmarks/compare_torch.py "${r101[@]}" --rounds=3 --steps=5 --warmup=2
       --torch_form=both)
  if [[ $versions != *'"torch_cuda": true'* ]]; then
    note "torch_unavailable" '"frameworks": "jax"'
    cmp+=(--frameworks=jax)
  fi
  first=()
  [[ ${TORCH_COMPILE:-0} == 1 ]] && first=(--torch_compile)
  # XLA's CPU count (a CPU lowering of the baseline step) once per input size.
  run compare_224_bf16 150 "${cmp[@]}" --dtype=bfloat16 --batch_size=128 "${first[@]}"
  run compare_224_fp32 120 "${cmp[@]}" --dtype=float32 --batch_size=128 --noxla_cpu_count
  # The default config's synthetic build (72x72 faces, about 30 s to render on 16 cores),
  # 3,000 of its images as JPEG files, cropped to 64 and resized to the 224x224 input; the
  # step it is compared with is the default config's small ResNet at 224.
  run input_pipeline_224_jpeg 120 benchmarks/input_pipeline.py --config=configs/default.py \
    --config.data.image_size=224 --config.data.crop_size=64 --batches=20 --jpeg_images=3000 \
    --steps=3
  run compare_112_bf16 110 "${cmp[@]}" "${at112[@]}" --dtype=bfloat16 --batch_size=256
  run compare_112_fp32 100 "${cmp[@]}" "${at112[@]}" --dtype=float32 --batch_size=256 \
    --noxla_cpu_count
else
  r101+=(--steps=10 --warmup=2)
  run train_224_bf16 90 benchmarks/train_step.py "${r101[@]}" --dtype=bfloat16 --batch_size=128
  run inference_224_bf16 40 benchmarks/inference.py "${r101[@]}" --dtype=bfloat16 --batch_size=256
  run train_112_bf16 90 benchmarks/train_step.py "${r101[@]}" "${at112[@]}" --dtype=bfloat16 \
    --batch_size=256
  run inference_112_bf16 40 benchmarks/inference.py "${r101[@]}" "${at112[@]}" --dtype=bfloat16 \
    --batch_size=256
  run train_224_fp32 90 benchmarks/train_step.py "${r101[@]}" --dtype=float32 --batch_size=128
  run train_112_fp32 90 benchmarks/train_step.py "${r101[@]}" "${at112[@]}" --dtype=float32 \
    --batch_size=256
  run inference_224_fp32 40 benchmarks/inference.py "${r101[@]}" --dtype=float32 --batch_size=256
  # The identity classifier at 1M and 10M ids, 512-d, 128 images: dense, sharded, sampled 0.1.
  run classifier_1gpu 150 benchmarks/classifier.py --devices=1 --num_classes=1000000,10000000 \
    --embedding_dim=512 --per_device_batch=128 --memory_budget_mib=120000
fi
note "done" "\"seconds\": $SECONDS"
