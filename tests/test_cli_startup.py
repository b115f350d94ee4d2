"""The command-line tools start at once: importing them, ``--help`` and usage errors load no torch.

Measured timings (``benchmarks/cli_startup.py``) are in docs/performance.md; here the property that makes
them fast is pinned: the heavy modules are imported only when work starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "trimesh", "av", "scipy", "skimage", "onnx", "onnxruntime")

# Each case: the entry module and the argv; the child prints the heavy modules it imported.
CASES = {
    "import sdk": ("sdk", None),
    "import sdk.cli.convert": ("sdk.cli.convert", None),
    "import sdk.cli.evaluate": ("sdk.cli.evaluate", None),
    "import export.cli": ("export.cli", None),
    "s4d-convert --help": ("sdk.cli.convert", ["--help"]),
    "s4d-export --help": ("export.cli", ["--help"]),
    "s4d-export onnx --help": ("export.cli", ["onnx", "--help"]),
    "s4d-eval --help": ("sdk.cli.evaluate", ["--help"]),
    "s4d-serve --help": ("sdk.cli.serve", ["--help"]),
    "s4d-serve bad value": ("sdk.cli.serve", ["--data-dir", "d", "--max-queue", "0"]),
    "s4d-convert bad flag": ("sdk.cli.convert", ["x.mp4", "-o", "o", "--bogus"]),
    "s4d-convert bad value": ("sdk.cli.convert", ["x.mp4", "-o", "o", "--steps", "abc"]),
    "s4d-convert bad choice": ("sdk.cli.convert", ["x.mp4", "-o", "o", "--decode", "nope"]),
    "s4d-export flops bad value": ("export.cli", ["flops", "--frames", "0"]),
}

CHILD = """
import json, sys
mod = sys.argv[1]
args = json.loads(sys.argv[2])
code = 0
if args is None:
    __import__(mod)
else:
    from importlib import import_module
    from typer.testing import CliRunner
    res = CliRunner().invoke(import_module(mod).app, args)
    code = res.exit_code
print(json.dumps({"code": code, "heavy": [m for m in json.loads(sys.argv[3]) if m in sys.modules]}))
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_heavy_imports_before_work(case):
    module, args = CASES[case]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", CHILD, module, json.dumps(args), json.dumps(HEAVY)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"{case} imported {result['heavy']}"
    if args is not None:
        assert result["code"] == (0 if "--help" in args else 2), result


def test_lazy_names_still_work():
    import sdk
    import sdk.sparse

    assert sdk.Generator.__name__ == "Generator" and sdk.MeshSequence.__name__ == "MeshSequence"
    assert {"Generator", "DiTConfig", "__version__"} <= set(dir(sdk))
    assert callable(sdk.sparse.block_sparse_attention) and "sculpt4d" in sdk.sparse.PRESETS
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        sdk.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        sdk.sparse.no_such_thing  # noqa: B018
