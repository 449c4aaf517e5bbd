#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the folder bench/gpu/prepare.sh wrote (with the
# repository's models/ one level up, as the device tool's working tree has
# it): every program of the bundles compiled ahead of time, and of kernels
# compiled here by the statically linked mixc, against the f64 reference at
# ragged sizes (fresh random inputs, poisoned outputs); exits non-zero on any
# failure. SANITIZE=1 adds compute-sanitizer (memcheck) at small sizes.
set -uo pipefail
cd "$(dirname "$0")"
[ -x ./mixc ] || xz -dkf mixc.xz
models=${MODELS:-../models}
status=0
fresh=$(mktemp -d)
# Fresh kernels at chunk CHUNK (default 64), and at the cost model's picks
# with activations stored in bf16 and in f16.
for f in "$models"/*.toml "$models"/bench/anchors.toml; do
  n=$(basename "$f" .toml)
  ./mixc compile "$f" --target sm_90 -o "$fresh/$n" --chunk "${CHUNK:-64}" >/dev/null || { echo "compile failed: $f"; status=1; }
  for s in bf16 f16; do
    ./mixc compile "$f" --target sm_90 --storage $s -o "$fresh/$n-$s" >/dev/null || { echo "compile failed: $f ($s)"; status=1; }
  done
done
./mixc compile "$models/bench/anchors.toml" --target sm_90 --matmul bf16 -o "$fresh/anchors-bf16" --chunk "${CHUNK:-64}" >/dev/null || status=1
# The narrow prefill's chunk scan, in value blocks and whole.
for bv in 0 32; do
  ./mixc compile "$models/bench/anchors.toml" --target sm_90 --scan --block-v $bv -o "$fresh/anchors-scan-v$bv" --chunk 32 >/dev/null || status=1
done
for b in bundles/*/ bundles-bf16/*/ bundles-f32/*/ "$fresh"/*/; do
  [ -d "$b" ] || continue
  if ! ./mixc gpu-check --kernels "$b" --max-t "${MAX_T:-600}"; then status=1; fi
done
if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  for b in bundles/*/; do
    compute-sanitizer --tool memcheck --error-exitcode 3 ./mixc gpu-check --kernels "$b" --max-t 40 >/dev/null || status=1
  done
fi
exit $status
