#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the folder bench/gpu/prepare.sh wrote: mixc's
# rows (bf16 tensor-core kernels, the sizes of issue 5), the anchors in the
# same run (fla, mlstm_kernels, SDPA; prefill and decode), and the schedule
# sweep against the cost model (issue 6). Outputs go to $OUT (or ./out).
# PARTS picks what to run: mixc, anchors, sweep (default: all three).
set -uo pipefail
cd "$(dirname "$0")"
[ -x ./mixc ] || xz -dkf mixc.xz
models=${MODELS:-../models}
out=${OUT:-out}; mkdir -p "$out"
parts=${PARTS:-mixc,anchors,sweep}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
if [[ $parts == *mixc* ]]; then
  # The anchors' precision (bf16 tensor-core dots; activations stored in
  # STORAGE, bf16 by default), each size under the cost model's pick for it
  # (or chunk CHUNK).
  chunk=(${CHUNK:+--chunk "$CHUNK"})
  for p in B=8,H=16,T=2048 B=8,H=16,T=8192 B=8,H=16,T=32768 B=1,H=16,T=65536; do
    b=$(mktemp -d)/k
    ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage "${STORAGE:-bf16}" \
      --sizes "$p" -o "$b" "${chunk[@]}" >/dev/null
    ./mixc bench "$models/bench/anchors.toml" --target cuda --kernels "$b" --mode prefill --runs 5 --sizes "$p"
  done | tee "$out/mixc_prefill.txt"
  b=$(mktemp -d)/k
  ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage "${STORAGE:-bf16}" -o "$b" >/dev/null
  ./mixc bench "$models/bench/anchors.toml" --target cuda --kernels "$b" --mode decode --runs 5 \
    --sizes B=64,H=16 --sizes B=128,H=16 --sizes B=256,H=16 | tee "$out/mixc_decode.txt"
fi
if [[ $parts == *anchors* ]] && [ -f anchors/gpu_anchor_bench.py ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mixc-site anchors/*.whl
  (cd anchors && PYTHONPATH=/tmp/mixc-site OUT="$PWD/../$out/anchors" timeout "${ANCHOR_S:-430}" python3 gpu_anchor_bench.py \
    --phases env,ceil,fla_dec,sdpa_dec,fla,mlstm,sdpa --budget "${ANCHOR_BUDGET:-400}" \
    --sizes 8x8192,8x2048,8x32768,1x65536) > "$out/anchors.txt" 2>&1
  grep -E "ceiling|chunk_|sdpa|mlstm|fused_rec" "$out/anchors.txt"
fi
if [[ $parts == *sweep* ]]; then
  # The points of issue 6 (B·H ∈ {8, 128}, L ∈ {2048, 8192}) unless SWEEP_SIZES
  # gives others (space-separated, e.g. "B=4,H=16,T=4096 B=2,H=16,T=16384");
  # SWEEP_MATMUL / SWEEP_STORAGE: the dot mode and activation dtype (default
  # tf32x3, f32), SWEEP_MAX candidates per point (8).
  read -r -a points <<< "${SWEEP_SIZES:-B=1,H=8,T=2048 B=1,H=8,T=8192 B=8,H=16,T=2048 B=8,H=16,T=8192}"
  sizes=(); for p in "${points[@]}"; do sizes+=(--sizes "$p"); done
  sizes+=(--matmul "${SWEEP_MATMUL:-tf32x3}" --storage "${SWEEP_STORAGE:-f32}")
  for m in ${SWEEP_MIXERS:-gla simple_gla gated_deltanet mlstm attention}; do
    timeout "${SWEEP_S:-100}" ./mixc bench "$models/bench/anchors.toml" --target cuda --mixer $m --sweep --max-candidates "${SWEEP_MAX:-8}" --runs 3 \
      "${sizes[@]}" > "$out/sweep_$m.txt" 2>&1
    grep -E "^pick|sweep at" "$out/sweep_$m.txt"
  done
fi
