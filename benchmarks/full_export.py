"""The full export path at real model sizes on one machine: random checkpoint -> ONNX (external
data) -> TensorRT-RTX engines with the BlockSparseAttention plugin, peak RSS and wall time per step.

    python benchmarks/full_export.py --size full                 # DiTConfig.full(), T = 16
    python benchmarks/full_export.py --size w1024-d7 --size w2048-d7 --size full   # the memory trend
    python benchmarks/full_export.py --size full --steps checkpoint,load,onnx   # no engines

Every step runs in its own process, so its peak RSS (``ru_maxrss`` of that process) is its own:
    checkpoint   write_random_checkpoint (fp16, streamed tensor by tensor)
    load         load_models in fp16 (the DiT's weights memory-mapped) + content hashes
    onnx:PART    export_onnx of one part (loads the models itself; external data over 2 GB)
    engine:PART  build_engine of that ONNX graph with TensorRT-RTX (ahead of time, no GPU), the
                 plugin for the DiT (S4D_TRT_PLUGIN, or a CMake build the builder finds)
Prints a markdown table per size: step, peak RSS (the kernel's ru_maxrss of the step's process),
peak anonymous memory (RssAnon sampled every 50 ms: RSS minus file-backed pages, i.e. minus the
memory-mapped checkpoint, which the kernel can drop and re-read under pressure), wall time,
output size, and plugin layers.
The machine's RAM is the limit to watch (24 GB on the CI machine). Work files go to --work-dir
(default /tmp/s4d_full_export); add --keep to keep them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

PARTS = ("dit", "vae_decoder", "vae_query", "conditioner")
SIZES = {  # name -> DiT overrides of DiTConfig.full(); VAE and conditioner are full size throughout
    "full": {},
    "w2048-d7": {"depth": 7, "num_moe_layers": 2},
    "w1024-d7": {"hidden_size": 1024, "num_heads": 8, "depth": 7, "num_moe_layers": 2},
    "w1024-d3": {"hidden_size": 1024, "num_heads": 8, "depth": 3, "num_moe_layers": 1},
}


# ---- the steps (run inside a child process) -----------------------------------------------------

def step_checkpoint(work: Path, size: str, frames: int) -> dict:
    import torch

    from sdk.models.checkpoint import write_random_checkpoint
    from sdk.models.config import ConditionerConfig, DiTConfig, VAEConfig

    target = work / "checkpoint"
    if target.exists():
        shutil.rmtree(target)
    write_random_checkpoint(target, DiTConfig.full(**SIZES[size]), VAEConfig.full(), ConditionerConfig.full(),
                            dtype=torch.float16, metadata={"benchmark": size})
    return {"bytes": sum(f.stat().st_size for f in target.iterdir())}


def step_load(work: Path, size: str, frames: int) -> dict:
    import torch

    from export.onnx import load_models

    dit, vae, cond, info = load_models(work / "checkpoint", torch.float16)
    return {"params": sum(p.numel() for p in dit.parameters()), "dit_dtype": str(next(dit.parameters()).dtype)}


def step_onnx(work: Path, size: str, frames: int, part: str) -> dict:
    from export.onnx import export_onnx

    result = export_onnx(work / "checkpoint", work / "onnx" / part, frames=frames, dtype="fp16", parts=(part,))
    files = list((work / "onnx" / part).iterdir())
    return {"bytes": sum(f.stat().st_size for f in files), "external_data": any(f.suffix == ".data" for f in files),
            "file": str(result.files[part])}


def step_engine(work: Path, size: str, frames: int, part: str) -> dict:
    from export.builder import build_part_engine, load_plugin, engine_shapes
    from export.tensorrt import import_tensorrt

    trt, flavour = import_tensorrt("tensorrt-rtx")
    manifest = json.loads((work / "onnx" / part / "export.json").read_text())
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    plugin = load_plugin(trt, log) if part == "dit" else None
    built, fallback = build_part_engine(trt, flavour, plugin, part, work / "onnx" / part / f"{part}.onnx",
                                        manifest["block_sparse_node"] if part == "dit" else None, "fp16",
                                        engine_shapes(part, manifest["conditioner_config"]["image_size"]), log)
    (work / "engines").mkdir(exist_ok=True)
    (work / "engines" / f"{part}.engine").write_bytes(built.data)
    return {"bytes": len(built.data), "plugin_layers": built.plugin_layers, "plugin_fallback": fallback}


class AnonymousPeak:
    """Samples this process's RssAnon (kB in /proc/self/status) in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            self._stop.wait(interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# ---- the driver ---------------------------------------------------------------------------------

def run_step(step: str, work: Path, size: str, frames: int) -> dict:
    """Run one step in a child process; its own peak RSS comes from wait4."""
    cmd = [sys.executable, __file__, "--child", step, "--work-dir", str(work), "--size", size,
           "--frames", str(frames)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"step": step, "seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 1024 ** 2, 2),
              "exit": proc.returncode}
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if lines:
        result.update(json.loads(lines[-1][len("RESULT "):]))
    return result


def table(size: str, rows: list[dict]) -> str:
    out = [f"### {size} (T = {rows[0].get('frames', '?')})", "",
           "| step | peak RSS (GB) | peak anonymous (GB) | wall (s) | output | notes |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        size_text = f"{r['bytes'] / 1024 ** 3:.2f} GB" if "bytes" in r else ""
        notes = []
        if r["exit"] != 0:
            notes.append(f"FAILED (exit {r['exit']})")
        if "params" in r:
            notes.append(f"DiT {r['params'] / 1e9:.2f}B params, {r['dit_dtype']}")
        if r.get("external_data"):
            notes.append("external data")
        if "plugin_layers" in r and r["step"] == "engine:dit":
            notes.append(f"plugin_layers={r['plugin_layers']}" + (f" (plugin build failed: {r['plugin_fallback']})"
                                                                   if r.get("plugin_fallback") else ""))
        anon = f"{r['peak_anon_gb']:.2f}" if "peak_anon_gb" in r else "?"
        out.append(f"| {r['step']} | {r['peak_rss_gb']:.2f} | {anon} | {r['seconds']:.1f} | {size_text} | "
                   f"{'; '.join(notes)} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", action="append", choices=sorted(SIZES), help="model size(s); default: full")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", default="checkpoint,load,onnx,engine",
                        help="comma-separated subset of checkpoint, load, onnx, engine")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/s4d_full_export"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint, ONNX files and engines")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.size or ["full"]

    if args.child:
        step, _, part = args.child.partition(":")
        fn = {"checkpoint": step_checkpoint, "load": step_load, "onnx": step_onnx, "engine": step_engine}[step]
        sampler = AnonymousPeak()
        result = fn(args.work_dir, sizes[0], args.frames, *([part] if part else []))
        result["peak_anon_gb"] = round(sampler.stop() / 1024 ** 3, 2)
        print("RESULT " + json.dumps(result), flush=True)
        return

    steps = args.steps.split(",")
    parts = args.parts.split(",")
    everything = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024 ** 3:.0f} GB RAM",
                  "sizes": {}}
    print(f"machine: {everything['machine']}")
    for size in sizes:
        work = args.work_dir / size
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        plan = [s for s in ("checkpoint", "load") if s in steps]
        plan += [f"onnx:{p}" for p in parts if "onnx" in steps]
        plan += [f"engine:{p}" for p in parts if "engine" in steps]
        for step in plan:
            print(f"[{size}] {step} ...", flush=True)
            row = run_step(step, work, size, args.frames)
            row["frames"] = args.frames
            rows.append(row)
            print(f"[{size}] {step}: {row}", flush=True)
            if row["exit"] != 0:
                break
        everything["sizes"][size] = rows
        print(table(size, rows), flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
