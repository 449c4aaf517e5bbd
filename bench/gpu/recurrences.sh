#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the folder bench/gpu/prepare.sh wrote: chunked
# recurrences in the register tier (`backends/ptx/src/codegen/rows.rs`),
# checked and timed against flash-linear-attention in the same call.
#   1. (check) the anchors (activations in f32 and bf16) compiled under each
#      of VARIANTS against the f64 reference (`gpu-check`, ragged sizes), and
#      CHECK_MODELS at their defaults (bf16 dots);
#   2. (bench) the anchors' MIXERS prefill at SIZES under each variant (bf16
#      dots and activations, every kernel of the program timed);
#   3. (decode) attention decode steps (the cache's prefix copy included);
#   4. (fla) fla's chunk kernels of the same mixers at the same sizes
#      (`anchors/gpu_anchor_bench.py --phases fla,mlstm`, wheels fla_core,
#      einops and mlstm_kernels in anchors/; ONLY picks the kernels).
# VARIANTS: `pick` (the cost model's schedule), `cCvV` (`--chunk C
# --block-v V`) or `cCvVs` (the same, split: states, then outputs), each
# with `-s` for the register tier without its slot forms (MIXC_SLOT_FORMS=0:
# no carried slots, one-column dots or grouped barriers), e.g. `pick pick-s`;
# CHECK_VARIANTS, if set, are the ones checked; SLOT_FORMS=0 compiles
# CHECK_MODELS without the slot forms. PARTS picks the parts (default check,bench,decode,fla).
# Exits non-zero when a check fails.
set -uo pipefail
cd "$(dirname "$0")"
[ -x ./mixc ] || xz -dkf mixc.xz
models=${MODELS:-../models}
out=${OUT:-out}; mkdir -p "$out"
parts=${PARTS:-check,bench,decode,fla}
variants=${VARIANTS:-pick c64v32 c64v64}
status=0
d=$(mktemp -d)
# The slot-forms setting of variant $1 (`-s`: off).
slots() { [[ $1 == *-s ]] && echo 0 || echo 1; }
flags() {
  local v=${1%-s}
  case $v in
    pick) ;;
    c*v*s) local c=${v#c}; c=${c%s}; echo --chunk "${c%%v*}" --block-v "${c##*v}" --split ;;
    c*v*) local c=${v#c}; echo --chunk "${c%%v*}" --block-v "${c##*v}" ;;
  esac
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
if [[ $parts == *check* ]]; then
  for v in ${CHECK_VARIANTS:-$variants}; do
    for s in f32 bf16; do
      read -ra flag <<< "$(flags "$v")"
      MIXC_SLOT_FORMS=$(slots "$v") ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage $s "${flag[@]}" \
        -o "$d/check-$v-$s" >/dev/null || { echo "compile failed: $v $s"; status=1; continue; }
      echo "== anchors, $v, $s"
      ./mixc gpu-check --kernels "$d/check-$v-$s" --max-t "${MAX_T:-400}" || status=1
    done
  done 2>&1 | tee "$out/check.txt"
  for n in ${CHECK_MODELS:-llama swa duo-attention hybrid linear-attn deltanet}; do
    MIXC_SLOT_FORMS=${SLOT_FORMS:-1} ./mixc compile "$models/$n.toml" --target sm_90 --matmul bf16 -o "$d/$n" >/dev/null \
      || { echo "compile failed: $n"; status=1; }
    ./mixc gpu-check --kernels "$d/$n" --max-t "${MAX_T:-400}" || status=1
  done 2>&1 | tee -a "$out/check.txt"
  grep -qiE "fail|error" "$out/check.txt" && status=1
fi
if [[ $parts == *bench* ]]; then
  for p in ${SIZES:-B=8,H=16,T=8192 B=8,H=16,T=2048}; do
    for v in $variants; do
      read -ra flag <<< "$(flags "$v")"
      b="$d/bench-$v-$p"
      MIXC_SLOT_FORMS=$(slots "$v") ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage bf16 --sizes "$p" "${flag[@]}" \
        -o "$b" >/dev/null || continue
      echo "== $v, $p"
      ./mixc bench "$models/bench/anchors.toml" --target cuda --kernels "$b" --mode prefill --runs 5 --sizes "$p" \
        --mixer "${MIXERS:-simple_gla,linear_attn}" | grep -vE "^$"
    done
  done 2>&1 | tee "$out/bench.txt"
fi
if [[ $parts == *decode* ]]; then
  b="$d/decode"
  ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage bf16 -o "$b" >/dev/null
  ./mixc bench "$models/bench/anchors.toml" --target cuda --kernels "$b" --mode decode --runs 5 --mixer attention \
    --sizes B=64,H=16,S=4096 2>&1 | grep -E "^attention|ceilings" | tee "$out/decode.txt"
fi
if [[ $parts == *fla* ]] && [ -f anchors/gpu_anchor_bench.py ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/mixc-site anchors/*.whl 2>&1 | tail -2
  (cd anchors && PYTHONPATH=/tmp/mixc-site OUT="$PWD/../$out/anchors" timeout "${ANCHOR_S:-240}" python3 gpu_anchor_bench.py \
    --phases env,ceil,fla,mlstm --budget "${ANCHOR_BUDGET:-220}" --only "${ONLY:-chunk_simple_gla,chunk_linear_attn}" \
    --sizes "${FLA_SIZES:-8x8192,8x2048}") > "$out/fla.txt" 2>&1
  grep -E "ceiling|chunk_|chunkwise|rror" "$out/fla.txt" | cut -c1-240
fi
exit $status
