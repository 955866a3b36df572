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
import messages
import operations
import server
import tenants
from harness import Goal

PER_SERVER = ("backend", "rotation")
"""Sections run on every server ``server.available()`` lists; the others on moto only."""
SECTIONS = {
    "codec": codec.run,
    "backend": backend.run,
    "rotation": operations.rotation,
    "kms": operations.kms,
    "distributed": distributed.run,
    "messages": messages.run,
    "tenants": tenants.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument(
        "--server", choices=sorted(server.SERVERS), action="append",
        help="run the per-server sections on these only (default: every one available)",
    )  # fmt: skip
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
    servers = [s for s in server.available() if not args.server or s in args.server]
    print(f"S3 servers for {', '.join(PER_SERVER)}: {', '.join(servers)}\n")
    for name in args.only or list(SECTIONS):
        if name in PER_SERVER:
            per_server: dict[str, object] = {}
            figures[name] = per_server
            for kind in servers:
                section = SECTIONS[name](quick=args.quick, server=kind)
                per_server[kind] = {"server": section["server"], **section["results"]}
                goals += [Goal(f"{g.name} [{kind}]", g.value, g.target, g.at_most)
                          for g in section["goals"]]  # fmt: skip
        else:
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
