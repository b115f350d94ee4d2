"""What the HTTP service costs per job, against s4d-convert on the same clip.

    python benchmarks/serve.py                      # the README main command's clip and options, 3 pairs
    python benchmarks/serve.py --pairs 5 --model tiny-random --clip examples/data/bouncing_box.mp4

Runs, interleaved in pairs so that background load hits both alike:

- ``s4d-convert CLIP -o OUT --format glb --format usd --json`` in a fresh process: the whole command
  (start-up, model load, conversion) and the conversion alone (the summary's per-clip seconds);
- one job on a running ``s4d-serve`` (the same model, loaded once before timing): from the start of
  the upload to the moment the client sees ``succeeded`` (polling every 50 ms), the job's own
  stage timings, and the time to download every result file.

Overhead per job = service latency - s4d-convert's conversion of the clip. Prints a table;
``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "benchmark-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def convert_once(clip: Path, model: str, out: Path) -> dict:
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", "from sdk.cli.convert import main; main()", str(clip), "-o",
                             str(out), "--model", model, "--format", "glb", "--format", "usd", "--json", "--quiet"],
                            capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"s4d-convert failed:\n{result.stderr}")
    item = json.loads(result.stdout)["items"][0]
    return {"command_s": wall, "conversion_s": item["seconds"]}


def serve_once(requests, url: str, clip: Path) -> dict:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    t0 = time.perf_counter()
    with open(clip, "rb") as video:
        job = requests.post(f"{url}/v1/jobs", headers=auth, files={"video": (clip.name, video)},
                            data={"format": ["glb", "usd"]}, timeout=60).json()
    accepted = time.perf_counter() - t0
    while True:
        status = requests.get(f"{url}/v1/jobs/{job['id']}", headers=auth, timeout=60).json()
        if status["state"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    latency = time.perf_counter() - t0
    if status["state"] != "succeeded":
        raise SystemExit(f"job failed: {status.get('error')}")
    t1 = time.perf_counter()
    size = sum(len(requests.get(f"{url}/v1/jobs/{job['id']}/files/{name}", headers=auth, timeout=60).content)
               for name in status["files"])
    return {"accepted_s": accepted, "latency_s": latency, "stages_s": sum(status["timings"].values()),
            "download_s": time.perf_counter() - t1, "bytes": size, "files": len(status["files"])}


def main() -> None:
    import requests

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--clip", type=Path, default=ROOT / "examples" / "data" / "bend_twist_200002.mp4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server

    with tempfile.TemporaryDirectory(prefix="s4d-bench-serve-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-c", "from sdk.cli.serve import main; main()", "--model",
                                   args.model, "--port", str(port), "--data-dir", f"{tmp}/data", "--token", TOKEN,
                                   "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if server.poll() is not None:
                    raise SystemExit("s4d-serve exited during start-up")
                time.sleep(0.1)
            ready = time.perf_counter() - t0
            serve_once(requests, url, args.clip)  # warm-up (first-call costs, as s4d-convert pays them too)
            rows = []
            for i in range(args.pairs):
                a = convert_once(args.clip, args.model, Path(tmp) / f"out{i}")
                b = serve_once(requests, url, args.clip)
                rows.append({**a, **b, "overhead_s": b["latency_s"] - a["conversion_s"]})
                print(f"pair {i + 1}: s4d-convert {a['command_s']:.1f} s (conversion {a['conversion_s']:.1f} s); "
                      f"s4d-serve job {b['latency_s']:.1f} s", flush=True)
        finally:
            server.terminate()
            server.wait(120)

    def cell(key: str) -> str:
        values = [r[key] for r in rows]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2f}{spread}"

    print(f"\n{args.pairs} pairs, model {args.model}, clip {args.clip.name}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; s4d-serve ready after {ready:.1f} s\n")
    print("| measure | seconds (mean ± std) |\n| --- | --- |")
    for label, key in (("s4d-convert, whole command (start-up + model load + conversion)", "command_s"),
                       ("s4d-convert, the conversion alone", "conversion_s"),
                       ("s4d-serve, upload accepted (202)", "accepted_s"),
                       ("s4d-serve, upload -> client sees `succeeded`", "latency_s"),
                       ("s4d-serve, the job's stages", "stages_s"),
                       ("s4d-serve, downloading every file", "download_s"),
                       ("**overhead per job** (service latency - conversion)", "overhead_s")):
        print(f"| {label} | {cell(key)} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "clip": args.clip.name, "ready_s": ready,
                                         "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
