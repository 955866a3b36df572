"""`make bench`: every section, printed as Markdown tables, figures in benchmarks/results.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import backend
import codec
import distributed
import operations
from harness import Goal

SECTIONS = {
    "codec": codec.run,
    "backend": backend.run,
    "rotation": operations.rotation,
    "kms": operations.kms,
    "distributed": distributed.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    args = parser.parse_args()
    started = time.time()
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    where = f"{machine['platform']}, {machine['cpus']} CPUs, Python {machine['python']}"
    print(f"# Benchmarks ({where})\n")
    figures: dict[str, object] = {"machine": machine}
    goals: list[Goal] = []
    for name in args.only or list(SECTIONS):
        section = SECTIONS[name](quick=args.quick)
        figures[name] = section["results"]
        goals += section["goals"]
    print("## Goals\n")
    for goal in goals:
        print(goal.line())
    figures["goals"] = [
        {"name": g.name, "value": g.value, "target": g.target, "met": g.met} for g in goals
    ]
    figures["elapsed_seconds"] = round(time.time() - started, 1)
    out = Path(__file__).parent / "results.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfigures written to {out} in {figures['elapsed_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
