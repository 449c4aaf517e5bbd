#!/usr/bin/env bash
# Run HERE (the build machine, with LLVM): writes kernel bundles for every zoo
# model and a CUDA-enabled mixc without LLVM into gpu-dist/, which travels to
# the GPU machine (carry gpu-dist) where bench/gpu/check.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=gpu-dist
rm -rf "$out" && mkdir -p "$out/bundles" "$out/bundles-bf16" "$out/bundles-f32" "$out/bench"
cargo build --release --features llvm
# f32-accurate kernels (dot on tensor cores as tf32x3) for every zoo model ...
for f in models/*.toml; do
  name=$(basename "$f" .toml)
  ./target/release/mixc compile "$f" --target sm_90 -o "$out/bundles/$name" --chunk "${CHUNK:-64}" >/dev/null
done
# ... and bf16 tensor-core kernels of the benchmark mixers (checked at bf16 tolerance).
for f in models/bench/anchors.toml; do
  name=$(basename "$f" .toml)
  ./target/release/mixc compile "$f" --target sm_90 --matmul bf16 -o "$out/bundles-bf16/$name" --chunk "${CHUNK:-64}" >/dev/null
  ./target/release/mixc compile "$f" --target sm_90 -o "$out/bundles-f32/$name" --chunk "${CHUNK:-64}" >/dev/null
done
# For the benchmark only (not checked by check.sh): the split schedule in bf16,
# and plain-FMA (simt) kernels as the baseline of the tensor-core path.
./target/release/mixc compile models/bench/anchors.toml --target sm_90 --matmul bf16 --split \
  -o "$out/bench/bf16-split" --chunk "${CHUNK:-64}" >/dev/null
./target/release/mixc compile models/bench/anchors.toml --target sm_90 --matmul simt \
  -o "$out/bench/simt" --chunk "${CHUNK:-64}" >/dev/null
for bv in 32 64; do
  ./target/release/mixc compile models/bench/anchors.toml --target sm_90 --matmul bf16 --block-v $bv \
    -o "$out/bench/bf16-v$bv" --chunk "${CHUNK:-64}" >/dev/null
done
# The binary for the GPU machine: CUDA through cudarc, no LLVM (kernels come from the bundles).
cargo build --release --no-default-features --features cuda
cp target/release/mixc "$out/mixc"
strip "$out/mixc" 2>/dev/null || true
cp bench/gpu/check.sh "$out/"
du -sh "$out"
