#!/usr/bin/env bash
# bench/cpu/ggml.sh - same-machine CPU anchor: ggml (llama.cpp's tensor
# library) timings for the sequence mixers mixc compiles, on THIS machine.
#
# What it measures (bench/cpu/ggml_anchor.c has the details and the FLOP
# formulas): f32, B=1, H=16, D=Dk=Dv=128, $THREADS threads (default 2),
# ggml_graph_compute time only, median of N runs after 1 warm-up:
#   gla           ggml_gated_linear_attn prefill              (T=$T)
#   ssm_scan      ggml_ssm_scan, Mamba-2 scalar decay = "simple GLA" (T=$T)
#   gdn           ggml_gated_delta_net                        (T=$T)
#   fa_causal_*   causal ggml_flash_attn_ext, q f32, K/V f16  (each T in $FA_TS)
#   gla_decode16  one GLA decode step, 16 seqs x 16 heads x 128x128 f32
#                 state, cold cache (64 MiB evicted before each run)
# Output: one line per op: "op T ms GFLOP/s", then "# min max n" (spread).
#
# What it needs: bash, python3 + pip with PyPI access (no GitHub access
# needed), gcc/g++ (C11/C++17), make; cmake (installed from PyPI with
# `python3 -m pip install cmake` when missing).  About 300 MB of disk under
# .ggml/ and ~0.5 GB RAM (the T=8192 f16 attention mask alone is 128 MiB).
#
# How long: first run ~3 min download+build on 2 cores (pip download ~20 s,
# ggml CPU build ~2 min at -j2), then the timings: recurrences ~15 s,
# attention ~25 s at T=8192 on a 2-core Zen 3 (~40 s in all).  Later runs reuse the
# download and the build (idempotent); only the timings run again.
#
# Noise: on the shared 2-core VM this was written on, whole-run medians moved
# by up to ~40% between runs minutes apart (spread within a run was small);
# run it back-to-back with the mixc numbers it is compared to, more than once.
#
# Knobs (env vars):
#   T=8192            recurrence length            FA_TS="2048 8192"  attention T's ("" skips)
#   THREADS=2         ggml threads                 RUNS=              runs per op (default: 5,
#   JOBS=2            build parallelism                               fa 3, decode 51)
#   KV=f16            attention K/V type (f16|f32)
#   LOAD_MAX=0.5      wait until the 1-min load average is below this ...
#   LOAD_WAIT_S=300   ... for at most this many seconds (0: don't wait)
#   LLAMA_CPP_PYTHON_VERSION=0.3.36   sdist whose vendor/llama.cpp/ggml is used
#
# Source: the llama-cpp-python sdist from PyPI carries llama.cpp (and ggml)
# under vendor/llama.cpp.  0.3.36 vendors llama.cpp 0c1e57098 (ggml 0.25.3),
# which has gated_linear_attn, ssm_scan, gated_delta_net and flash_attn_ext.
#
# Build: ggml CPU backend only (targets ggml-base + ggml-cpu, static),
# Release, GGML_NATIVE=ON (-march=native), no BLAS, GGML_OPENMP=OFF: ggml
# then uses its own pthread threadpool (the anchor creates one persistent
# pool with ggml_threadpool_new and hybrid polling).  Configured from the
# llama.cpp root (not ggml/ standalone: the sdist lacks ggml/ggml.pc.in,
# which the standalone configure needs), with all llama targets off.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$ROOT/.ggml"
VER="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
T="${T:-8192}"
FA_TS="${FA_TS-2048 8192}"
THREADS="${THREADS:-2}"
JOBS="${JOBS:-2}"
KV="${KV:-f16}"
RUNS="${RUNS:-}"
LOAD_MAX="${LOAD_MAX:-0.5}"
LOAD_WAIT_S="${LOAD_WAIT_S:-300}"

log() { echo "[ggml.sh] $*" >&2; }

mkdir -p "$CACHE/dl" "$CACHE/src" "$CACHE/bin"

# 1. Download the sdist.  Only llama-cpp-python is forced to source: with
#    `--no-binary :all:` pip would also build cmake and ninja (the sdist's
#    build requirements, needed just to read its metadata) from source,
#    which takes well over 15 minutes on 2 cores.
TARBALL="$CACHE/dl/llama_cpp_python-$VER.tar.gz"
if [[ ! -f "$TARBALL" ]]; then
    log "downloading llama-cpp-python==$VER sdist from PyPI"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VER" -d "$CACHE/dl"
fi
SRC="$CACHE/src/llama_cpp_python-$VER"
LLAMA="$SRC/vendor/llama.cpp"
if [[ ! -f "$SRC/.extracted" ]]; then
    log "extracting $TARBALL"
    rm -rf "$SRC"
    tar xzf "$TARBALL" -C "$CACHE/src"
    touch "$SRC/.extracted"
fi
GGML_INC="$LLAMA/ggml/include"
for op in ggml_gated_linear_attn ggml_ssm_scan ggml_gated_delta_net ggml_flash_attn_ext; do
    grep -q "$op(" "$GGML_INC/ggml.h" || { log "error: $op missing from vendored ggml.h"; exit 1; }
done

# 2. cmake (from PyPI if missing).
CMAKE="$(command -v cmake || true)"
if [[ -z "$CMAKE" ]]; then
    log "cmake not found; installing it from PyPI"
    python3 -m pip install --quiet cmake
    CMAKE="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/cmake"
fi

# 3. Build ggml's CPU backend (incremental: a no-op when up to date).
BUILD="$CACHE/build-$VER"
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
    log "configuring ggml (CPU only) in $BUILD"
    "$CMAKE" -S "$LLAMA" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DGGML_BLAS=OFF -DGGML_CCACHE=OFF \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
        >"$CACHE/configure-$VER.log" 2>&1 ||
        { tail -n 30 "$CACHE/configure-$VER.log" >&2; rm -rf "$BUILD"; exit 1; }
fi
start=$(date +%s)
"$CMAKE" --build "$BUILD" --target ggml-base ggml-cpu -j"$JOBS" >"$BUILD/build.log" 2>&1 ||
    { tail -n 30 "$BUILD/build.log" >&2; exit 1; }
log "ggml build step: $(( $(date +%s) - start )) s (log: $BUILD/build.log)"
LIBS=("$BUILD/ggml/src/libggml-cpu.a" "$BUILD/ggml/src/libggml-base.a")

# 4. Compile the anchor when it is missing or older than its inputs.
ANCHOR_SRC="$ROOT/bench/cpu/ggml_anchor.c"
BIN="$CACHE/bin/ggml_anchor-$VER"
if [[ ! -x "$BIN" || "$ANCHOR_SRC" -nt "$BIN" || "${LIBS[0]}" -nt "$BIN" || "${LIBS[1]}" -nt "$BIN" ]]; then
    log "compiling $ANCHOR_SRC"
    gcc -O2 -march=native -std=c11 -D_GNU_SOURCE -Wall -Wextra -I"$GGML_INC" \
        "$ANCHOR_SRC" -o "$BIN" "${LIBS[@]}" -lstdc++ -lm -lpthread
fi

# 5. Wait (bounded) for a quiet machine, then time.
load() { cut -d' ' -f1 /proc/loadavg; }
waited=0
while awk -v l="$(load)" -v m="$LOAD_MAX" 'BEGIN { exit !(l >= m) }' && ((waited < LOAD_WAIT_S)); do
    ((waited == 0)) && log "load $(load) >= $LOAD_MAX; waiting up to ${LOAD_WAIT_S}s"
    sleep 10
    waited=$((waited + 10))
done
log "llama-cpp-python $VER, llama.cpp $(git -C "$LLAMA" rev-parse --short=9 HEAD 2>/dev/null || echo '?'); load before timing: $(cut -d' ' -f1-3 /proc/loadavg) (waited ${waited}s)"

ARGS=(-t "$THREADS" --kv "$KV")
[[ -n "$RUNS" ]] && ARGS+=(-r "$RUNS")
"$BIN" "$T" "${ARGS[@]}" --ops gla,ssm_scan,gdn,gla_decode16
for t in $FA_TS; do
    "$BIN" "$T" "${ARGS[@]}" --ops fa --fa-T "$t" | grep -v '^#'
done
log "load after timing: $(cut -d' ' -f1-3 /proc/loadavg)"
