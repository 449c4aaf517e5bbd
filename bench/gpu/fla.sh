#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the folder bench/gpu/prepare.sh wrote (models/
# one level up): GLA-1.3B through mixc and through flash-linear-attention's
# Hugging Face model (../shared/anchors/gpu_model_bench.py) on the same card
# in the same call — the same-run ratio issue 7 asks for. The wheels (fla,
# transformers and what they need, from .whl/) make gpu-dist too big to
# carry whole: carry ["gpu-dist/mixc.xz", "gpu-dist/fla.sh",
# "gpu-dist/cublas.sh", "gpu-dist/anchors"].
#   PROMPT=N STEPS=M   prompt length and generated tokens (512, 128: the anchor's)
#   BUDGET=S           seconds for the whole script (430)
#   CHECK="a.toml …"   the models gpu-check runs first (../models/gla.toml)
#   SWITCHES="V=1 …"   each also times mixc's batch 1 and prefill of 2048 with
#                      that variable set (e.g. MIXC_NARROW_PREFILL=0)
# The wheels, downloaded on a machine with internet into .whl/ (ignored):
#   python3 -m pip download --only-binary=:all: --python-version 3.12 -d .whl \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_28_x86_64 --platform any \
#     "transformers==5.6.2" "flash-linear-attention==0.6.0"
# (fla 0.6.0 needs transformers ≥ 5.6.2; the card's machine has torch and triton.)
set -uo pipefail
cd "$(dirname "$0")"
[ -x ./mixc ] || xz -dkf mixc.xz
nvidia-smi --query-gpu=name --format=csv,noheader
# shellcheck source=cublas.sh
. ./cublas.sh
t0=$(date +%s)
# First the GEMVs against f64 and GLA whole against the CPU (a wrong kernel
# is not worth timing).
# shellcheck disable=SC2086
./mixc gpu-check --model ${CHECK:-../models/gla.toml} | grep -v " ok$"
model=../models/bench/gla-1.3b.toml
w=/tmp/gla-1.3b.safetensors
[ -f $w ] || ./mixc init-weights $model -o $w --seed 1 --bf16 >/dev/null
prompt=${PROMPT:-512} steps=${STEPS:-128}
ids=$(seq 1 "$prompt" | tr '\n' ' ')
batch=(); for _ in $(seq 16); do batch+=(--prompt-ids "$ids"); done
gla() {
  echo "mixc GLA-1.3B, $1:"
  shift
  env $switch timeout 120 ./mixc run $model --weights $w --target cuda "$@" --bench | grep -E "^(startup|prefill|decode|bench)"
}
switch=""
gla "batch 1" --prompt-ids "$ids" --max-new-tokens "$steps"
for switch in ${SWITCHES:-}; do
  gla "batch 1, $switch" --prompt-ids "$ids" --max-new-tokens "$steps"
  gla "prefill of 2048 tokens, $switch" --prompt-ids "$(seq 1 2048 | tr '\n' ' ')" --max-new-tokens 2
done
switch=""
gla "batch 16" "${batch[@]}" --max-new-tokens "$steps"
gla "prefill of 2048 tokens" --prompt-ids "$(seq 1 2048 | tr '\n' ' ')" --max-new-tokens 2
python3 -m pip install -q --no-index --find-links anchors "flash-linear-attention==0.6.0" "transformers==5.6.2" 2>&1 \
  | grep -v WARNING | tail -3
left=$(( ${BUDGET:-430} - ($(date +%s) - t0) ))
OUT=${OUT:-/tmp/fla-out} timeout "$left" python3 anchors/gpu_model_bench.py --models gla-1.3b --prefill_T 2048 \
  --dec_B 1,16 --prompt "$prompt" --steps "$steps" --no_generate --budget $(( left - 15 )) >/dev/null 2>&1
echo "fla (rc=$?):"
cat "${OUT:-/tmp/fla-out}/table.md" 2>/dev/null || grep -E "ROW|rror" "${OUT:-/tmp/fla-out}/log.txt" | cut -c1-300 | tail -12
