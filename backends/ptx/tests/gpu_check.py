#!/usr/bin/env python3
"""Runs a bundle written by `MIXC_PTX_BUNDLE=DIR cargo test -p mixc-backend-ptx --test main gpu_bundle`
on a GPU (through CuPy, which loads the PTX with the driver) and compares every
output with the tile interpreter's f32 result. Outputs and scratch buffers start
poisoned (NaN). Exits non-zero on any failure.

    python3 backends/ptx/tests/gpu_check.py target/gpu-bundle [CASE-SUBSTRING]
"""
import json
import os
import sys

import cupy as cp
import numpy as np

TOL = 1e-4  # max |got - want| / max(max |want|, 1e-3), per output


def main():
    d = sys.argv[1]
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    cases = json.load(open(os.path.join(d, "manifest.json")))
    funcs = {}

    def fn(ptx, entry):
        if (ptx, entry) not in funcs:
            funcs[(ptx, entry)] = cp.RawModule(path=os.path.join(d, ptx)).get_function(entry)
        return funcs[(ptx, entry)]

    failed, worst = [], 0.0
    for c in cases:
        if only not in c["case"]:
            continue
        bufs = []
        for b in c["buffers"]:
            dt = np.int32 if b["int"] else np.float32
            if "input" in b:
                bufs.append(cp.asarray(np.fromfile(os.path.join(d, b["input"]), dtype=dt)))
            else:
                bufs.append(cp.full(max(int(b["n"]), 1), -7777 if b["int"] else np.nan, dtype=dt))
        try:
            for l in c["launches"]:
                grid = tuple(int(x) for x in l["grid"])
                if 0 in grid:
                    continue
                f = fn(l["ptx"], l["entry"])
                args = []
                for a in l["args"]:
                    if "buf" in a:
                        args.append(bufs[a["buf"]])
                    elif "i32" in a:
                        args.append(np.int32(a["i32"]))
                    else:
                        args.append(np.float32(a["f32"]))
                if l["scratch"]:
                    args.append(cp.full(l["scratch"] * grid[0] * grid[1] * grid[2] // 4, np.nan, dtype=cp.float32))
                if l["shared"] > 48 * 1024:
                    f.max_dynamic_shared_size_bytes = l["shared"]
                f(grid, (l["threads"], 1, 1), tuple(args), shared_mem=l["shared"])
            cp.cuda.runtime.deviceSynchronize()
        except Exception as e:  # noqa: BLE001
            failed.append(f"{c['case']}: launch failed: {e}")
            continue
        for b, arr in zip(c["buffers"], bufs):
            if "expected" not in b:
                continue
            dt = np.int32 if b["int"] else np.float32
            want = np.fromfile(os.path.join(d, b["expected"]), dtype=dt).astype(np.float64)
            got = cp.asnumpy(arr)[: len(want)].astype(np.float64)
            scale = max(float(np.max(np.abs(want))) if len(want) else 0.0, 1e-3)
            bad_nan = np.isnan(got) != np.isnan(want)
            diff = np.where(np.isnan(want), 0.0, np.abs(got - want))
            err = float(np.max(diff)) / scale if len(want) else 0.0
            if bad_nan.any() or not err <= TOL:
                i = int(np.argmax(diff)) if len(want) else 0
                failed.append(
                    f"{c['case']}: {b['name']}: rel err {err:.3g} (nan mismatches {int(bad_nan.sum())}), "
                    f"at {i}: got {got[i] if len(got) else None} want {want[i] if len(want) else None}"
                )
            worst = max(worst, err if err == err else 1.0)
    n = sum(1 for c in cases if only in c["case"])
    print(f"{n - len(set(f.split(':')[0] for f in failed))}/{n} cases pass; worst passing rel err {worst:.3g}")
    for f in failed:
        print("FAIL", f)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
