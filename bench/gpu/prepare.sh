#!/usr/bin/env bash
# Run HERE (the build machine, with LLVM 22): writes gpu-dist/, which travels to
# the GPU machine (`carry gpu-dist`), where bench/gpu/check.sh and
# bench/gpu/bench.sh run from it:
#   gpu-dist/mixc.xz   mixc with CUDA and LLVM linked statically (the GPU
#                      machine has no LLVM; ~58 MB stripped, ~14 MB as xz), so
#                      it compiles kernels there too (`bench --sweep`, `exec`,
#                      `run --target cuda`);
#   gpu-dist/bundles*  kernels compiled here ahead of time (the deployment path
#                      without a compiler: `--kernels DIR`);
#   gpu-dist/anchors/  the anchor scripts and the wheels in .whl/ (if present;
#                      with fla's and transformers' wheels gpu-dist is over
#                      the 64 MiB carry limit: see fla.sh for what to carry).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=gpu-dist
rm -rf "$out" && mkdir -p "$out/bundles" "$out/bundles-bf16" "$out/bundles-f32" "$out/anchors"
cargo build --release --features llvm
# Schedules: the cost model's pick for sm_90 (`chunk = "auto"`), or CHUNK.
chunk=(${CHUNK:+--chunk "$CHUNK"})
for f in models/*.toml; do
  name=$(basename "$f" .toml)
  "${CARGO_TARGET_DIR:-target}"/release/mixc compile "$f" --target sm_90 -o "$out/bundles/$name" "${chunk[@]}" >/dev/null
done
# The anchors' precision: bf16 tensor-core dots, bf16 activations in memory.
"${CARGO_TARGET_DIR:-target}"/release/mixc compile models/bench/anchors.toml --target sm_90 --matmul bf16 --storage bf16 \
  -o "$out/bundles-bf16/anchors" "${chunk[@]}" >/dev/null
"${CARGO_TARGET_DIR:-target}"/release/mixc compile models/bench/anchors.toml --target sm_90 -o "$out/bundles-f32/anchors" "${chunk[@]}" >/dev/null
# LLVM linked statically: llvm-sys (prefer-dynamic) falls back to the static
# libraries when llvm-config refuses --link-shared (scripts/llvm-static).
LLVM_SYS_221_PREFIX="$PWD/scripts/llvm-static" CARGO_TARGET_DIR="${STATIC_TARGET:-target/static}" \
  cargo build --release --features cuda
strip -o "$out/mixc" "${STATIC_TARGET:-target/static}/release/mixc"
xz -T0 -6 -f "$out/mixc"
cp bench/gpu/check.sh bench/gpu/bench.sh bench/gpu/tiers.sh bench/gpu/recurrences.sh bench/gpu/variants.sh bench/gpu/model.sh bench/gpu/fla.sh bench/gpu/cublas.sh "$out/"
cp ../shared/anchors/gpu_anchor_bench.py ../shared/anchors/gpu_model_bench.py "$out/anchors/" 2>/dev/null || true
cp .whl/*.whl "$out/anchors/" 2>/dev/null || true
du -sh "$out"
