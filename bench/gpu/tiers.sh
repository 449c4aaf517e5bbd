#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the folder bench/gpu/prepare.sh wrote: the
# register tier (tiles in registers, `backends/ptx/src/codegen/rows.rs`)
# checked and timed against the shared-memory tier (`--shared-tiles`) and
# PyTorch's SDPA (cuDNN, FlashAttention-2) in the same run.
#   1. every model whose bf16-dot kernels the register tier takes, and the
#      anchors (activations in f32 and bf16; attention also under each of
#      BLOCKS, `--attention-blocks`), against the f64 reference (`gpu-check`,
#      ragged sizes);
#   2. attention and linear attention prefill at SIZES under each of VARIANTS
#      (`pick`: the cost model's schedule, `shared`: the shared-memory tier,
#      `QxK`: attention blocks, `QxK:N`: and N CTAs per SM, `--ctas-per-sm`,
#      `QxK:N:W`: and W rows a warp, `--warp-rows`; BLOCKS takes the same);
#   3. the schedule sweep of attention (bf16 dots and storage) at B=8, T=8192;
#   4. SDPA at the same sizes (`anchors/gpu_anchor_bench.py --phases sdpa`).
#   5. (PARTS=ncu) one attention launch under Nsight Compute (NCU_KERNEL: another
#      kernel of the anchors, e.g. NCU_KERNEL=o_fused NCU_MIXER=linear_attn);
#   6. (PARTS=decode) attention decode steps at SDPA's decode sizes
#      (SDPA_PHASES=env,ceil,sdpa,sdpa_dec times SDPA's).
#   7. (PARTS=sanitize) compute-sanitizer memcheck over gpu-check of the
#      register-tier models and attention under each of BLOCKS, small sizes.
# PARTS picks (check, bench, sweep, ncu, decode, sanitize, sdpa; default
# check, bench, sweep, sdpa). Exits non-zero when a check fails.
set -uo pipefail
cd "$(dirname "$0")"
[ -x ./mixc ] || xz -dkf mixc.xz
models=${MODELS:-../models}
out=${OUT:-out}; mkdir -p "$out"
parts=${PARTS:-check,bench,sweep,sdpa}
status=0
d=$(mktemp -d)
# The compile flags of a variant: pick, shared, QxK, QxK:N or QxK:N:W.
flags() {
  case $1 in
    pick) ;;
    shared) echo --shared-tiles ;;
    *:*:*) local r=${1#*:}; echo --attention-blocks "${1%%:*}" --ctas-per-sm "${r%%:*}" --warp-rows "${r##*:}" ;;
    *:*) echo --attention-blocks "${1%%:*}" --ctas-per-sm "${1##*:}" ;;
    *) echo --attention-blocks "$1" ;;
  esac
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
if [[ $parts == *check* ]]; then
  for n in ${CHECK_MODELS:-llama swa duo-attention hybrid linear-attn deltanet}; do
    ./mixc compile "$models/$n.toml" --target sm_90 --matmul bf16 -o "$d/$n" >/dev/null || { echo "compile failed: $n"; status=1; }
    ./mixc gpu-check --kernels "$d/$n" --max-t "${MAX_T:-600}" || status=1
  done 2>&1 | tee "$out/check.txt"
  for s in f32 bf16; do
    ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage $s -o "$d/anchors-$s" >/dev/null || status=1
    ./mixc gpu-check --kernels "$d/anchors-$s" --max-t "${MAX_T:-600}" || status=1
    # Attention under each block shape (pipelined or not, 4 or 8 warps).
    for bl in ${BLOCKS:-128x64 64x64 128x32 64x128}; do
      # shellcheck disable=SC2046
      ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage $s $(flags "$bl") \
        -o "$d/attention-$s-$bl" >/dev/null || status=1
      ./mixc gpu-check --kernels "$d/attention-$s-$bl" --max-t "${MAX_T:-600}" || status=1
    done
  done 2>&1 | tee -a "$out/check.txt"
  grep -qiE "fail|error" "$out/check.txt" && status=1
fi
if [[ $parts == *bench* ]]; then
  for p in ${SIZES:-B=8,H=16,T=2048 B=8,H=16,T=8192}; do
    for v in ${VARIANTS:-pick shared 128x64 64x64 128x32}; do
      read -ra flag <<< "$(flags "$v")"
      b="$d/bench-$v-$p"
      ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage bf16 --sizes "$p" "${flag[@]}" -o "$b" >/dev/null
      echo "== $v, $p"
      ./mixc bench "$models/bench/anchors.toml" --target cuda --kernels "$b" --mode prefill --runs 5 --sizes "$p" \
        --mixer "${MIXERS:-attention,linear_attn}" | grep -E "^(attention|linear_attn) "
    done
  done 2>&1 | tee "$out/bench.txt"
fi
if [[ $parts == *sweep* ]]; then
  timeout "${SWEEP_S:-150}" ./mixc bench "$models/bench/anchors.toml" --target cuda --mixer attention --sweep --runs 3 \
    --matmul bf16 --storage bf16 --sizes "${SWEEP_SIZES:-B=8,H=16,T=8192}" 2>&1 | tee "$out/sweep.txt"
fi
if [[ $parts == *decode* ]]; then
  # Attention decode steps (one query against a bf16 cache of S keys, the
  # cache's append included) at SDPA's decode sizes.
  b="$d/decode"
  ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage bf16 -o "$b" >/dev/null
  ./mixc bench "$models/bench/anchors.toml" --target cuda --kernels "$b" --mode decode --runs 5 --mixer attention \
    --sizes B=64,H=16,S=4096 --sizes B=64,H=16,S=32768 2>&1 | grep -E "^attention|^#.*ceilings" | tee "$out/decode.txt"
fi
if [[ $parts == *ncu* ]] && [ -x /usr/local/cuda/bin/ncu ]; then
  # One attention prefill launch under Nsight Compute: where its time goes.
  b="$d/ncu"
  ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage bf16 \
    --attention-blocks "${NCU_BLOCKS:-128x64}" -o "$b" >/dev/null
  /usr/local/cuda/bin/ncu --kernel-name "${NCU_KERNEL:-flash_attention}" --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section InstructionStats --section Occupancy \
    --section LaunchStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    ./mixc bench "$models/bench/anchors.toml" --target cuda --kernels "$b" --mode prefill --runs 1 \
    --sizes "${NCU_SIZES:-B=8,H=16,T=2048}" --mixer "${NCU_MIXER:-attention}" > "$out/ncu.txt" 2>&1
  grep -E "Duration|Registers|Achieved Occupancy|Stall|Issue Slots|Executed Ipc|Warp Cycles|Throughput" "$out/ncu.txt" | head -40
fi
if [[ $parts == *sdpa* ]] && [ -f anchors/gpu_anchor_bench.py ]; then
  (cd anchors && OUT="$PWD/../$out/anchors" timeout "${ANCHOR_S:-120}" python3 gpu_anchor_bench.py \
    --phases "${SDPA_PHASES:-env,ceil,sdpa}" --budget "${ANCHOR_BUDGET:-100}" --sizes 8x8192,8x2048) > "$out/sdpa.txt" 2>&1
  grep -E "ceiling|sdpa" "$out/sdpa.txt"
fi
if [[ $parts == *sanitize* ]]; then
  san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for n in ${CHECK_MODELS:-llama swa duo-attention hybrid linear-attn deltanet}; do
    ./mixc compile "$models/$n.toml" --target sm_90 --matmul bf16 -o "$d/san-$n" >/dev/null || echo "FAILED to compile $n"
    "$san" --tool memcheck --error-exitcode 3 ./mixc gpu-check --kernels "$d/san-$n" --max-t 40 > "$d/san.log" 2>&1 \
      || echo "FAILED under compute-sanitizer: $n"
    echo "== $n"; tail -2 "$d/san.log"
  done 2>&1 | tee "$out/sanitize.txt"
  for bl in ${BLOCKS:-128x64 64x64 128x32 64x128}; do
    # shellcheck disable=SC2046
    ./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 --storage bf16 $(flags "$bl") \
      -o "$d/san-attention-$bl" >/dev/null || status=1
    "$san" --tool memcheck --error-exitcode 3 ./mixc gpu-check --kernels "$d/san-attention-$bl" --max-t 40 \
      > "$d/san.log" 2>&1 || echo "FAILED under compute-sanitizer: anchors, attention $bl"
    echo "== anchors, attention $bl"; tail -2 "$d/san.log"
  done 2>&1 | tee -a "$out/sanitize.txt"
  grep -qiE "ERROR SUMMARY: [1-9]|fail" "$out/sanitize.txt" && status=1
fi
exit $status
