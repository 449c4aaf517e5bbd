#!/usr/bin/env python3
"""Refits the GPU cost model's latency terms (passes::device::LatencyTerms).

    python3 bench/fit/fit_latency.py FEATURES.csv SWEEP_DIR [SWEEP_DIR ...]

FEATURES.csv comes from `cargo run --release --example cost_features` (per
kernel of every candidate: statements, elements, global loads and dots per
program, matrix-unit instructions per warp, and the PTX backend's threads /
shared bytes / spill / estimated registers); each SWEEP_DIR
holds `sweep_*.txt` files of `mixc bench --target cuda --sweep` (bench/gpu/
bench.sh, part `sweep`). The model, per kernel:

    waves × (op·ops + elem·elems·(1−s) + spilled·elems·s + load·loads + dot·dots
             + mma·mma instructions per warp)

with waves = ⌈programs / (SMs × programs per SM)⌉ (programs per SM from shared
memory, threads and registers, at most 32) and s the share of a program's
tile elements that touch tiles spilled to global scratch; a candidate's time is the sum over its kernels plus 4 µs per launch. The terms
are fitted by non-negative least squares on relative error, and the script
prints, per size point, the pick and its gap to the fastest measured
candidate. Needs numpy.
"""
import csv
import glob
import math
import os
import re
import sys
from collections import defaultdict

import numpy as np

SMS, SHARED, RESERVED, THREADS, REGISTERS, LAUNCH = 132, 228 * 1024, 1024, 2048, 65536, 4e-6
TERMS = ["op_s", "elem_s", "spilled_elem_s", "load_s", "dot_s", "mma_s"]


def measured(dirs):
    out = {}
    for d in dirs:
        for path in glob.glob(f"{d}/sweep_*.txt"):
            point = None
            for line in open(path):
                m = re.match(r"# mixer (\S+) sweep at B=(\d+), H=(\d+),.*T=(\d+):", line)
                if m:
                    point = (m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
                    continue
                m = re.match(r"\s+\d+\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+\d+\s", line)
                if m and point:
                    out.setdefault(point + (m.group(1).strip(),), []).append(float(m.group(3)) * 1e-3)
    return {k: float(np.median(v)) for k, v in out.items()}


def features(path):
    rows = defaultdict(list)
    for r in csv.DictReader(open(path)):
        key = (r["mixer"], int(r["B"]), int(r["H"]), int(r["T"]), r["schedule"])
        rows[key].append({k: float(v) for k, v in r.items() if k not in ("mixer", "schedule", "kernel")})
    return rows


def row(kernels):
    x, launches = np.zeros(len(TERMS)), 0
    for k in kernels:
        if k["programs"] <= 0:
            continue
        per_sm = max(1, min(SHARED // (k["shared"] + RESERVED), THREADS // max(1, k["threads"]), 32))
        regs = math.ceil(min(k.get("registers", 0), 255) / 8) * 8
        if regs > 0:
            per_sm = max(1, min(per_sm, REGISTERS // (regs * 32 * math.ceil(k["threads"] / 32))))
        waves = math.ceil(k["programs"] / (SMS * per_sm))
        s = k["spilled_share"] if k["scratch"] > 0 else 0.0
        x += waves * np.array(
            [k["ops_pp"], k["elems_pp"] * (1 - s), k["elems_pp"] * s, k["loads_pp"], k["dots_pp"], k.get("mma_pw", 0)]
        )
        launches += 1
    return x, launches


def nnls(A, b):
    active = list(range(A.shape[1]))
    while True:
        sol, *_ = np.linalg.lstsq(A[:, active], b, rcond=None)
        if (sol >= 0).all():
            break
        active = [a for a, v in zip(active, sol) if v >= 0]
    terms = np.zeros(A.shape[1])
    terms[active] = sol
    return terms


def main():
    # TERMS=op,elem,spilled,load,dot,mma evaluates those terms instead of
    # fitting; MIXERS=a,b fits (and reports) only those mixers.
    feats, meas = features(sys.argv[1]), measured(sys.argv[2:])
    only = os.environ.get("MIXERS", "").split(",") if os.environ.get("MIXERS") else None
    keys = [k for k in meas if k in feats and (only is None or k[0] in only)]
    xs = [row(feats[k]) for k in keys]
    X = np.array([x for x, _ in xs])
    n = np.array([l for _, l in xs])
    y = np.array([meas[k] for k in keys])
    A, b = X / y[:, None], (y - n * LAUNCH) / y
    if os.environ.get("TERMS"):
        terms = np.array([float(x) for x in os.environ["TERMS"].split(",")])
    else:
        terms = nnls(A, b)
    print("fitted on" if not os.environ.get("TERMS") else "evaluated on", len(keys), "candidates:", ", ".join(f"{t} = {v:.3g}" for t, v in zip(TERMS, terms)))
    pred = X @ terms + n * LAUNCH
    print("median |log(pred/measured)| = %.3f" % np.median(np.abs(np.log(pred / y))))
    points = defaultdict(list)
    for k, p, m in zip(keys, pred, y):
        # A point is a size and a storage (a bf16 sweep's labels say so).
        storage = k[4].split(", ")[-1] if k[4].endswith(" storage") else "f32 storage"
        points[k[:4] + (storage,)].append((p, m, k[4]))
    within = 0
    for point, cands in sorted(points.items()):
        pick, best = min(cands), min(cands, key=lambda c: c[1])
        gap = pick[1] / best[1] - 1
        within += gap <= 0.10
        print(f"{point}: pick {pick[2]} ({pick[1] * 1e3:.3f} ms), fastest {best[2]} ({best[1] * 1e3:.3f} ms), gap {gap:.1%}")
    print(f"pick within 10% of the fastest at {within} of {len(points)} points")


if __name__ == "__main__":
    main()
