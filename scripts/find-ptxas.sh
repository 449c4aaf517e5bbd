#!/usr/bin/env bash
# Prints the path of a ptxas that can validate PTX (the pip package's, or one on PATH).
set -euo pipefail
if [ -n "${MIXC_PTXAS:-}" ] && [ -x "$MIXC_PTXAS" ]; then echo "$MIXC_PTXAS"; exit 0; fi
site=$(python3 -c 'import nvidia.cuda_nvcc as m; print(list(m.__path__)[0])' 2>/dev/null || true)
if [ -n "$site" ] && [ -x "$site/bin/ptxas" ]; then echo "$site/bin/ptxas"; exit 0; fi
if command -v ptxas >/dev/null; then command -v ptxas; exit 0; fi
exit 1
