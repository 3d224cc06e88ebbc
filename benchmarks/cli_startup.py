"""How fast the CLI answers: `geoseg --help`, every command's --help and `geoseg models`,
against `rio --help` and a bare `import torch`, measured in the same run (median of N).

    nice .venv/bin/python benchmarks/cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], repeat: int) -> tuple[float, float]:
    """Median wall and CPU (user + system) time of ``cmd`` in seconds; CPU time is what a busy
    machine changes least."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    geoseg, rio = str(BIN / "geoseg"), str(BIN / "rio")
    rows = {
        "rio --help": timed([rio, "--help"], args.repeat),
        "python -c 'import torch'": timed([sys.executable, "-c", "import torch"], args.repeat),
        "geoseg --help": timed([geoseg, "--help"], args.repeat),
    }
    from geoseg.cli.main import cli

    for command in sorted(cli.commands):
        rows[f"geoseg {command} --help"] = timed([geoseg, command, "--help"], args.repeat)
    rows["geoseg models"] = timed([geoseg, "models"], max(1, args.repeat // 2))
    base_wall, base_cpu = rows["rio --help"]
    print(f"{'command':<28}{'wall s':>8}{'x rio':>7}{'CPU s':>8}{'x rio':>7}")
    for name, (wall, cpu) in rows.items():
        print(f"{name:<28}{wall:>8.2f}{wall / base_wall:>7.2f}{cpu:>8.2f}{cpu / base_cpu:>7.2f}")


if __name__ == "__main__":
    main()
