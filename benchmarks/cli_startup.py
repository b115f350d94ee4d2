"""How fast the command-line tools answer when no work is asked: ``--help`` and a usage error.

    python benchmarks/cli_startup.py               # 5 runs each, median, as a markdown table
    python benchmarks/cli_startup.py --runs 9

Each case runs in a fresh interpreter (``python -c "<entry point>()" ARGS``, the same code the
console scripts run) and is compared with ``python -c pass`` measured the same way, so the ratio
does not depend on how fast the machine is. The cases are interleaved run by run so background
load hits them alike. Set PYTHONPATH to measure a checkout instead of the installed package.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

ENTRY = {"s4d-convert": "from sdk.cli.convert import main", "s4d-export": "from export.cli import main",
         "s4d-eval": "from sdk.cli.evaluate import main"}
CASES = [
    ("python -c pass", None, []),
    ("s4d-convert --help", "s4d-convert", ["--help"]),
    ("s4d-export --help", "s4d-export", ["--help"]),
    ("s4d-eval --help", "s4d-eval", ["--help"]),
    ("s4d-convert x.mp4 -o o --bogus (bad flag)", "s4d-convert", ["x.mp4", "-o", "o", "--bogus"]),
    ("s4d-convert x.mp4 -o o --steps abc (bad value)", "s4d-convert", ["x.mp4", "-o", "o", "--steps", "abc"]),
    ("s4d-export flops --frames 0 (bad value)", "s4d-export", ["flops", "--frames", "0"]),
]


def _command(tool: str | None, args: list[str]) -> list[str]:
    if tool is None:
        return [sys.executable, "-c", "pass"]
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {tool!r}; {ENTRY[tool]}; main()", *args]


def measure(runs: int) -> list[tuple[str, float, int]]:
    times: dict[str, list[float]] = {label: [] for label, _, _ in CASES}
    codes: dict[str, int] = {}
    for _ in range(runs):
        for label, tool, args in CASES:
            t0 = time.perf_counter()
            res = subprocess.run(_command(tool, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 check=False)
            times[label].append(time.perf_counter() - t0)
            codes[label] = res.returncode
    return [(label, statistics.median(times[label]), codes[label]) for label, _, _ in CASES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = measure(args.runs)
    base = rows[0][1]
    print(f"| command | exit | median of {args.runs} (s) | / `python -c pass` |")
    print("|---|---|---|---|")
    for label, median, code in rows:
        print(f"| `{label}` | {code} | {median:.3f} | {median / base:.1f}x |")


if __name__ == "__main__":
    main()
