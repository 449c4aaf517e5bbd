#!/usr/bin/env python3
"""Where a JIT-compiled CPU kernel spends its time, instruction by instruction.

The CPU backend's ignored `bench` test, run with MIXC_PERF_MAP=1, writes a
perf symbol map (/tmp/perf-PID.map) and each kernel's machine code to
/tmp/mixc-NAME-ADDR.bin (ADDR: where it ran, in hex). Record a profile of the
same run, then point this script at both:

    MIXC_PERF_MAP=1 MIXC_BENCH_KIND=gla MIXC_BENCH_MODE=2 MIXC_BENCH_TOKENS=4 \\
      perf record -o /tmp/p.data -F 4000 \\
      target/release/deps/main-HASH --ignored --exact bench --nocapture
    python3 bench/cpu/hot.py /tmp/p.data /tmp/mixc-o_step-*.bin [--min 0.5]

It prints the hottest 256-byte stretches of the kernel, then every
instruction of them with its share of the kernel's samples (perf attributes
a stall to the instruction after the one that waits, as usual). Needs perf
and binutils' objdump; x86-64 only.
"""

import argparse
import collections
import re
import subprocess
import sys


def samples(data: str, base: int, size: int) -> collections.Counter:
    out = subprocess.run(["perf", "script", "-i", data, "-F", "ip"], capture_output=True, text=True, check=True)
    hist: collections.Counter = collections.Counter()
    for word in out.stdout.split():
        ip = int(word, 16)
        if base <= ip < base + size:
            hist[ip - base] += 1
    return hist


def disassembly(path: str) -> list:
    out = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-mi386:x86-64", "--adjust-vma=0", path],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = []
    for line in out.stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(.*)", line)
        if m and m.group(2).strip():
            lines.append((int(m.group(1), 16), m.group(2).strip()))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="perf.data of the run")
    ap.add_argument("code", help="/tmp/mixc-NAME-ADDR.bin of the kernel")
    ap.add_argument("--min", type=float, default=2.0, help="show 256-byte stretches with at least this %% (2)")
    args = ap.parse_args()
    m = re.search(r"-([0-9a-f]+)\.bin$", args.code)
    if not m:
        print(f"{args.code}: not a /tmp/mixc-NAME-ADDR.bin dump", file=sys.stderr)
        return 2
    with open(args.code, "rb") as f:
        size = len(f.read())
    hist = samples(args.data, int(m.group(1), 16), size)
    total = sum(hist.values())
    if total == 0:
        print("no samples in the kernel (another run's map or dump?)", file=sys.stderr)
        return 1
    lines = disassembly(args.code)
    stretch: collections.Counter = collections.Counter()
    for off, n in hist.items():
        stretch[off // 256] += n
    hot = sorted(k for k, n in stretch.items() if 100.0 * n / total >= args.min)
    print(f"{total} samples in the kernel; stretches with >= {args.min}%:")
    for k in hot:
        print(f"  {k * 256:6x}-{k * 256 + 255:6x}  {100.0 * stretch[k] / total:5.1f}%")
    for k in hot:
        print(f"\n-- {k * 256:x}")
        for off, ins in lines:
            if off // 256 == k:
                print(f"{off:6x} {100.0 * hist.get(off, 0) / total:5.1f}%  {ins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
