#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the folder bench/gpu/prepare.sh wrote (models/
# one level up): whole models on the GPU against the same models on the CPU
# (`mixc gpu-check --model`, random weights, projections in f32 and bf16),
# then GLA-1.3B (models/bench/gla-1.3b.toml, random weights written here)
# timed by `mixc run --target cuda`. Exits non-zero on any failed check.
#   MODELS="a.toml b.toml"  the models to check (default: every models/*.toml)
#   BIG=0                   skip checking GLA-1.3B whole against the CPU
#   BENCH=0                 skip the 1.3B run
#   PROMPT=N STEPS=M        its prompt length and generated tokens (64, 64)
#   NEW=0                   skip the forms not yet run on a card
#                           (MIXC_SPLIT_NORM=1, MIXC_STEP_BLOCKS_FIRST=1)
set -uo pipefail
cd "$(dirname "$0")"
[ -x ./mixc ] || xz -dkf mixc.xz
# shellcheck source=cublas.sh
. ./cublas.sh
status=0
models=${MODELS:-$(ls ../models/*.toml ../models/bench/llama-kv-int8.toml)}
# shellcheck disable=SC2086
./mixc gpu-check --model $models || status=1
# The forms written while no card was lent, checked the same way (the GEMV
# check above covers the split norm's kernels whatever the switches say).
if [ "${NEW:-1}" = 1 ]; then
  # shellcheck disable=SC2086
  MIXC_SPLIT_NORM=1 MIXC_STEP_BLOCKS_FIRST=1 ./mixc gpu-check --model $models | grep -v "^gemv" || status=1
fi
# GLA-1.3B whole on the card against the CPU (its shapes through the GEMV).
if [ "${BIG:-1}" = 1 ]; then
  timeout 300 ./mixc gpu-check --model ../models/bench/gla-1.3b.toml | grep -v "^gemv" || status=1
fi
if [ "${BENCH:-1}" = 1 ]; then
  w=/tmp/gla-1.3b.safetensors
  [ -f $w ] || ./mixc init-weights ../models/bench/gla-1.3b.toml -o $w --seed 1 --bf16
  ids=$(seq 1 "${PROMPT:-64}" | tr '\n' ' ')
  batch=(); for _ in $(seq 16); do batch+=(--prompt-ids "$ids"); done
  # gla WHAT [VAR=VALUE] -- ARGS…: one run of GLA-1.3B under the switch, its
  # startup, prefill and decode lines (with --bench among ARGS, its medians).
  gla() {
    local what=$1 switch=$2
    shift 3
    echo "GLA-1.3B, bf16 weights, $what${switch:+ ($switch)}:"
    env $switch ./mixc run ../models/bench/gla-1.3b.toml --weights $w --target cuda "$@" \
      --max-new-tokens "${STEPS:-64}" | grep -E "^(startup|prefill|decode|bench)" || status=1
  }
  gla "batch 1 (--bench: medians of 3 runs after the first)" "" -- --prompt-ids "$ids" --bench
  gla "batch 1, decode value blocks of 64 only" MIXC_DECODE_BLOCK_V=64 -- --prompt-ids "$ids"
  gla "batch 1, norms as kernels of their own" MIXC_FOLD_NORM=0 -- --prompt-ids "$ids"
  gla "batch 1, no programmatic dependent launches" MIXC_PDL=0 -- --prompt-ids "$ids"
  gla "batch 1, weights copied from pageable memory" MIXC_PINNED=0 -- --prompt-ids "$ids"
  gla "batch 1, projections by cuBLAS" MIXC_GEMV=0 -- --prompt-ids "$ids"
  gla "batch 1, kernel by kernel" MIXC_CUDA_GRAPHS=0 -- --prompt-ids "$ids"
  gla "batch 16 (--bench)" "" -- "${batch[@]}" --bench
  gla "batch 16, projections by cuBLAS" MIXC_SKINNY=0 -- "${batch[@]}"
  if [ "${NEW:-1}" = 1 ]; then
    gla "batch 16, the RMSNorm split between products" MIXC_SPLIT_NORM=1 -- "${batch[@]}" --bench
    gla "batch 16, step value blocks first" MIXC_STEP_BLOCKS_FIRST=1 -- "${batch[@]}" --bench
    gla "batch 16, both" "MIXC_SPLIT_NORM=1 MIXC_STEP_BLOCKS_FIRST=1" -- "${batch[@]}" --bench
    gla "batch 16 again, default" "" -- "${batch[@]}" --bench
    gla "batch 1, step value blocks first" MIXC_STEP_BLOCKS_FIRST=1 -- --prompt-ids "$ids" --bench
  fi
fi
# One decode step's kernels, each timed by Nsight Compute (kernel by kernel:
# graph replay hides the names), grouped by name.
if [ "${PROFILE:-0}" = 1 ] && command -v ncu >/dev/null; then
  w=/tmp/gla-1.3b.safetensors
  MIXC_CUDA_GRAPHS=0 timeout 300 ncu --metrics gpu__time_duration.sum --print-summary per-kernel \
    --launch-skip "${SKIP:-1500}" --launch-count "${COUNT:-460}" \
    ./mixc run ../models/bench/gla-1.3b.toml --weights $w --target cuda --prompt-ids "1 2 3" --max-new-tokens 12 \
    2>&1 | grep -v "^==PROF=="
fi
# The same for a decode step of 16 sequences side by side (PROFILE16=1).
if [ "${PROFILE16:-0}" = 1 ] && command -v ncu >/dev/null; then
  w=/tmp/gla-1.3b.safetensors
  batch=(); for _ in $(seq 16); do batch+=(--prompt-ids "1 2 3"); done
  MIXC_CUDA_GRAPHS=0 timeout 300 ncu --metrics gpu__time_duration.sum --print-summary per-kernel \
    --launch-skip "${SKIP16:-12000}" --launch-count "${COUNT:-460}" \
    ./mixc run ../models/bench/gla-1.3b.toml --weights $w --target cuda "${batch[@]}" --max-new-tokens 40 \
    2>&1 | grep -v "^==PROF=="
fi
exit $status
