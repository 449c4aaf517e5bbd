#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the folder bench/gpu/prepare.sh wrote: checks
# and times schedule variants that the default bundles do not hold, in one
# call: decode steps in value-column blocks (`--block-v`, one program per
# (batch, head, block of columns)) and the prefill's token-by-token form over
# several tokens a pass (`--step-tokens`), and kernels asked to leave room
# for more CTAs per SM (`--ctas-per-sm`, fewer registers). Correctness first (every variant's
# bundle against the f64 reference, f32 and bf16), then the decode steps at
# the issue's batches (bf16 storage and dots, the anchors' precision) and the
# multi-token prefill at B=8, T=2048. Outputs go to $OUT (or ./out).
set -uo pipefail
cd "$(dirname "$0")"
[ -x ./mixc ] || xz -dkf mixc.xz
models=${MODELS:-../models}
out=${OUT:-out}; mkdir -p "$out"
anchors="$models/bench/anchors.toml"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
status=0
dir=$(mktemp -d)
check() { # name, compile flags...
  local name=$1; shift
  ./mixc compile "$anchors" --target sm_90 -o "$dir/$name" "$@" >/dev/null || { echo "compile failed: $name"; status=1; return; }
  ./mixc gpu-check --kernels "$dir/$name" --max-t "${MAX_T:-300}" > "$out/check_$name.txt" 2>&1 || status=1
  echo "check $name: $(tail -n 1 "$out/check_$name.txt")"
}
for bv in ${BLOCKS:-16 32 64}; do
  check "v$bv" --block-v "$bv"
  check "v$bv-bf16" --block-v "$bv" --matmul bf16 --storage bf16
done
check "c8-v32" --block-v 32 --ctas-per-sm 8 --matmul bf16 --storage bf16
for n in ${TOKENS:-4 8}; do
  check "steps$n" --step-tokens "$n"
  check "steps$n-bf16" --step-tokens "$n" --matmul bf16 --storage bf16
done
# Decode steps: value blocks against the whole head, same run.
for bv in 0 ${BLOCKS:-16 32 64}; do
  b="$dir/dec-v$bv"
  ./mixc compile "$anchors" --target sm_90 --matmul bf16 --storage bf16 --block-v "$bv" -o "$b" >/dev/null || continue
  echo "== decode, value blocks of ${bv} (0: whole head)"
  ./mixc bench "$anchors" --target cuda --kernels "$b" --mode decode --runs 5 \
    --sizes B=64,H=16 --sizes B=128,H=16 --sizes B=256,H=16
done 2>&1 | tee "$out/decode_blocks.txt"
# Decode steps with fewer registers a thread and more CTAs an SM (ptxas
# `.minnctapersm`), whole head and blocks of 32 columns.
for c in ${CTAS:-4 8 16}; do
  for bv in 0 32; do
    b="$dir/dec-c$c-v$bv"
    ./mixc compile "$anchors" --target sm_90 --matmul bf16 --storage bf16 --block-v "$bv" --ctas-per-sm "$c" -o "$b" >/dev/null || continue
    echo "== decode, $c CTAs per SM asked, value blocks of ${bv}"
    ./mixc bench "$anchors" --target cuda --kernels "$b" --mode decode --runs 5 \
      --sizes B=64,H=16 --sizes B=128,H=16 --sizes B=256,H=16
  done
done 2>&1 | tee "$out/decode_ctas.txt"
# Prefill token by token, 1/4/8 tokens a pass (recurrences), B=8 T=2048.
for n in 1 ${TOKENS:-4 8}; do
  b="$dir/pre-s$n"
  ./mixc compile "$anchors" --target sm_90 --matmul bf16 --storage bf16 --step-tokens "$n" -o "$b" >/dev/null || continue
  echo "== prefill token by token, $n a pass"
  ./mixc bench "$anchors" --target cuda --kernels "$b" --mode prefill --runs 3 --sizes B=8,H=16,T=2048
done 2>&1 | tee "$out/prefill_steps.txt"
exit $status
