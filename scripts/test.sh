#!/usr/bin/env bash
# Runs every check CI runs: setup (idempotent), formatting, clippy, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The GPU paths build without CUDA (cudarc loads it at run time): lint them too.
cargo clippy --workspace --all-targets --features cuda -- -D warnings
cargo test --workspace
