#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the folder prepare.sh wrote: every bundled
# program against the f64 reference at ragged sizes (fresh random inputs,
# poisoned outputs); exits non-zero on any failure. With SANITIZE=1 also
# under compute-sanitizer (memcheck) at small sizes.
set -uo pipefail
cd "$(dirname "$0")"
status=0
for b in bundles/*/ bundles-bf16/*/; do
  [ -d "$b" ] || continue
  if ! ./mixc gpu-check --kernels "$b" --max-t "${MAX_T:-600}"; then status=1; fi
done
if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  for b in bundles/*/; do
    compute-sanitizer --tool memcheck --error-exitcode 3 ./mixc gpu-check --kernels "$b" --max-t 40 >/dev/null || status=1
  done
fi
exit $status
