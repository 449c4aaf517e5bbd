#!/usr/bin/env bash
# Builds mixc and runs the bundled hybrid model (GLA layers with an attention
# layer): its graphs and tile programs, the cost model's pick, then random
# weights, a prompt, and generated tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
target=${CARGO_TARGET_DIR:-target}
mixc=$target/release/mixc
model=models/hybrid.toml
$mixc compile $model --emit graph | head -n 20
$mixc explain $model --target sm_90 --sizes B=8,T=8192 --top 3
$mixc init-weights $model -o "$target/hybrid.safetensors" --seed 0
$mixc run $model --weights "$target/hybrid.safetensors" --prompt-ids "1 2 3 4 5 6 7 8" --max-new-tokens 8 --report-memory
