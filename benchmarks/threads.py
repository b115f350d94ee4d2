"""Intra-op threads vs speed of ``s4d-convert`` (the README main command and the tiny model).

    python benchmarks/threads.py                      # threads 1, 2 and the default, 2 repeats
    python benchmarks/threads.py --threads 1 2 4 --repeats 3 --models demo

Each run is a fresh ``s4d-convert`` process (``--threads N``, or no flag for torch's default) on
the shipped sample clip; the runs are interleaved (repeat by repeat) so background load hits
every setting alike, and the table gives the median wall time of the conversion (the item's
seconds: load, sample, decode, mesh, save) and of the two heaviest stages from the manifest,
plus the 1-minute load average seen before the runs of that row (other processes share the
machine). Set PYTHONPATH to measure a checkout instead of the installed package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "examples" / "data" / "bend_twist_200002.mp4"
MODELS = {
    # the README main command (the embedded demo model at its own defaults: 16 frames, 16 steps, R = 96)
    "demo": ["--format", "glb", "--format", "usd"],
    # the same work on the tiny random-weight model (small widths: the non-network stages dominate)
    "tiny": ["--model", "tiny-random", "--frames", "16", "--steps", "16", "--resolution", "96", "--format", "glb",
             "--format", "usd"],
}


def run_once(model: str, threads: int | None, work: Path) -> dict:
    out = work / f"{model}-{threads}"
    cmd = [sys.executable, "-c", "import sys; sys.argv[0] = 's4d-convert'; from sdk.cli.convert import main; main()",
           str(CLIP), "-o", str(out), "--json", "--quiet", "--overwrite", *MODELS[model]]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    load = os.getloadavg()[0]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    item = json.loads(res.stdout)["items"][0]
    manifest = json.loads((Path(item["output"]) / "manifest.json").read_text())
    return {"seconds": item["seconds"], "timings": manifest["timings_s"], "ran": item["ran"], "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="explicit counts (default run added)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    settings = [*args.threads, None]
    results: dict[tuple[str, int | None], list[dict]] = {(m, t): [] for m in args.models for t in settings}
    with tempfile.TemporaryDirectory(prefix="s4d_threads_") as tmp:
        for model in args.models:
            run_once(model, None, Path(tmp))  # warm-up: kernel cache, file cache, first-import costs
        for rep in range(args.repeats):
            for model in args.models:
                for threads in settings:
                    r = run_once(model, threads, Path(tmp))
                    results[(model, threads)].append(r)
                    print(f"# rep {rep} {model} threads={threads}: {r['seconds']:.1f} s "
                          f"(load {r['load']:.2f}, ran {r['ran']['threads']})", file=sys.stderr)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"median of {args.repeats} runs")
    print()
    print("| model | --threads | threads used (torch / C++ kernel) | conversion (s), median | each run (s) "
          "| sample (s) | decode (s) | load avg before each run |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, threads), runs in results.items():
        used = runs[0]["ran"]["threads"]
        med = statistics.median
        each = ", ".join(f"{r['seconds']:.1f}" for r in runs)
        loads = ", ".join(f"{r['load']:.1f}" for r in runs)
        print(f"| {model} | {threads if threads is not None else 'default'} | {used['torch_intra_op']} / "
              f"{used.get('cpp_kernel', '-')} | {med(r['seconds'] for r in runs):.1f} | {each} | "
              f"{med(r['timings']['sample'] for r in runs):.1f} | {med(r['timings']['decode'] for r in runs):.1f} | "
              f"{loads} |")


if __name__ == "__main__":
    main()
