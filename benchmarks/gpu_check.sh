#!/usr/bin/env bash
# The GPU check: ResNet-101 train step (baseline and APRN) and inference of the exported
# recognizer at 224x224 and 112x112, bfloat16 and float32, on one GPU. Appends one JSON line
# per run to RESULTS and the scripts' output to RESULTS with .log for .jsonl.
#
#   bash benchmarks/gpu_check.sh [RESULTS]   # default: $OUT/gpu_check.jsonl, else ./gpu_check.jsonl
#
# Takes about 8 minutes on one H100 with the compiles. Environment:
#   PYTHON    the interpreter (default python3).
#   WHEELS    a folder of wheels for packages the interpreter lacks (e.g. ml_collections on a
#             machine without internet); installed offline into a temporary folder. Without
#             it, a missing package is installed with pip from requirements.txt.
#   BUDGET_S  seconds for all runs (default 480). A run is started only while at least its
#             expected time is left, and stopped when the budget is spent; either way a JSON
#             line says so, and the runs before it stay in RESULTS.
set -uo pipefail
cd "$(dirname "$0")/.."

results=${1:-${OUT:-.}/gpu_check.jsonl}
log=${results%.jsonl}.log
python=${PYTHON:-python3}
budget_s=${BUDGET_S:-480}
mkdir -p "$(dirname "$results")"

note() {  # Appends one JSON line {"gpu_check": $1, ...$2} to the results.
  echo "{\"gpu_check\": \"$1\"${2:+, $2}}" | tee -a "$results"
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
print(json.dumps(dict(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
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

r101=(--config=configs/resnet101.py --steps=10 --warmup=2)
at112=(--config.data.image_size=112 --config.data.crop_size=112)
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
note "done" "\"seconds\": $SECONDS"
