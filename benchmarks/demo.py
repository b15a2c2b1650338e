"""The demo's promise, measured: `dermctl demo` at its defaults, its margins and its time.

    .venv/bin/python benchmarks/demo.py                       # the demo as `dermctl demo` runs it
    .venv/bin/python benchmarks/demo.py --workdir /tmp/dw     # keep the workspace (report, runs)

Runs `dermctl.demo.run_demo` with the default `DemoConfig` (the recipe of `TINY_OVERRIDES`) in a fresh
workspace, then prints the verdict, the figures (kNN macro-F1 with all shots and 10 shots, with 95 %
intervals; stratified baseline; linear probe and fine-tuning rows), each step's wall time, and the
process's wall and CPU time (user + sys, threads included: on a shared machine wall time is inflated by
other load, CPU time much less so).

Exit status 0 when the promise holds: pretrained ahead of random init by >= 10 points of kNN macro-F1 with
all shots and >= 5 points at 10 shots, with intervals that do not overlap, fine-tuned pretrained not below
the stratified baseline's interval, and the whole demo within 5 minutes of wall time (`--max-seconds`);
1 otherwise, with the failed checks listed. Too slow for the test suite, which asserts weaker properties
(tests/test_demo.py, tests/test_demo_chain.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ALL_SHOTS_MARGIN = 10.0
FEW_SHOTS_MARGIN = 5.0


def checks(f: dict, wall: float, max_seconds: float) -> list[str]:
    """The failed checks of the demo's promise (empty: it holds)."""
    failed = []
    pre, rnd = f["knn"]["pretrained"], f["knn"]["random"]
    for key, need in (("all", ALL_SHOTS_MARGIN), ("10", FEW_SHOTS_MARGIN)):
        if key not in pre:
            failed.append(f"kNN {key} shots: not evaluated")
            continue
        margin = pre[key]["macro_f1"] - rnd[key]["macro_f1"]
        if margin < need:
            failed.append(f"kNN {key} shots: margin {margin:.1f} < {need} points")
        if pre[key]["ci95"][0] <= rnd[key]["ci95"][1]:
            failed.append(
                f"kNN {key} shots: the intervals overlap ({pre[key]['ci95']} vs {rnd[key]['ci95']})"
            )
    ft, strat = f["finetuned"], f["stratified"]
    if ft["pretrained"]["macro_f1"] < strat["ci95"][1]:
        failed.append(
            f"fine-tuned pretrained {ft['pretrained']['macro_f1']} is not above the stratified baseline"
        )
    if wall > max_seconds:
        failed.append(f"wall time {wall:.0f} s > {max_seconds:.0f} s")
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="workspace to use (default: a temporary one)")
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--json", action="store_true", help="print the figures and timings as JSON")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the ImageNet row: from the local cache or unavailable

    from dermctl.demo import DemoConfig, run_demo
    from dermctl.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="dermctl-demo-") as tmp:
        root = args.workdir or Path(tmp) / "ws"
        t0 = time.perf_counter()
        summary = run_demo(Workspace.at(root), DemoConfig(), force=args.workdir is not None)
        wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    failed = checks(summary.figures, wall, args.max_seconds)
    out = {
        "figures": summary.figures,
        "steps": summary.steps,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "cpus": os.cpu_count(),
        "failed": failed,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(summary.verdict)
        print()
        for s in summary.steps:
            print(f"  {s['step']:<28} {s['seconds']:7.1f} s")
        print(f"wall {wall:.1f} s, CPU (user+sys) {cpu:.1f} s on {os.cpu_count()} cores")
        print("promise holds" if not failed else "promise FAILS: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
