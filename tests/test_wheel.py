"""The package as users get it: sdist -> wheel -> a fresh venv, used from outside the checkout.

CI otherwise only tests the editable install, where ``cpp_ext/`` is found next to the ``sdk``
package in the checkout. Here the sdist is built, the wheel is built from that sdist, the wheel is
installed with ``torch==2.13.0`` (the README's pin) into a new venv, and then - from a temporary
working directory, with no ``PYTHONPATH`` - the README main command runs and a smoke script proves
the C++ CPU kernel is built from the wheel's own copy of the sources and is the backend
``torch.ops.s4d.block_sparse_attention`` uses on CPU. pip's cache is left on: the first run on a
machine downloads/unpacks torch, later ones take about a minute for the install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "examples" / "data" / "bend_twist_200002.mp4"
TORCH_PIN = "torch==2.13.0"
# What a wheel must carry for the fast paths (a sample of each tree; the lists are checked below).
NATIVE_FILES = [
    "sdk/_native/cpp_ext/cpu/block_sparse_attention_cpu.cpp",
    "sdk/_native/cpp_ext/include/s4d/block_sparse_attention.h",
    "sdk/_native/cpp_ext/include/s4d/block_sparse_attention_cuda.h",
    "sdk/_native/cpp_ext/include/s4d/marching_cubes_cuda.h",
    "sdk/_native/cpp_ext/cuda/torch_bindings.cpp",
    "sdk/_native/cpp_ext/cuda/block_sparse_attention.cu",
    "sdk/_native/cpp_ext/cuda/marching_cubes.cu",
    "sdk/_native/cpp_ext/CMakeLists.txt",
    "sdk/_native/plugins_trt/CMakeLists.txt",
    "sdk/_native/plugins_trt/src/block_sparse_attention_plugin.cpp",
    "sdk/_native/plugins_trt/core/src/plugin_core.cpp",
    "sdk/_native/plugins_trt/core/include/s4d_trt/plugin_core_c.h",
    "sdk/weights/demo/sculpt4d.json",
]
# Messages of a pip that cannot reach its index (the only reason this test may skip).
NO_INDEX = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
            "Network is unreachable", f"No matching distribution found for {TORCH_PIN}")

SMOKE = r"""
import sys
from pathlib import Path

import torch

import sdk
import sdk.kernels.cpu as cpu
from sdk.sparse import attention
from sdk.sparse.pattern import SparsePattern

venv = Path(sys.prefix).resolve()
assert Path(sdk.__file__).resolve().is_relative_to(venv), f"sdk imported from {sdk.__file__}, not {venv}"
ext = cpu.cpp_ext_dir().resolve()
assert ext.is_relative_to(venv) and ext.parts[-2:] == ("_native", "cpp_ext"), f"cpp_ext_dir() = {ext}"
assert cpu.cpu_kernel_available(), "C++ CPU kernel unavailable: " + str(cpu.cpu_kernel_unavailable_reason())
info = cpu.cpu_kernel_info()
q = torch.randn(1, 2, 4 * 32, 64)
k, v = torch.randn_like(q), torch.randn_like(q)
backend = attention._fastest_backend(q, 16)
assert backend is attention._cpu_kernel_attention, f"auto picks {backend.__name__}, not the C++ kernel"
pattern = SparsePattern.for_tokens(4, 32, 16, (1,), True)
out = torch.ops.s4d.block_sparse_attention(q, k, v, 4, 16, [1], True, 64 ** -0.5)
ref = attention.reference_block_sparse_attention(q, k, v, pattern, 16)
assert torch.allclose(out, ref, atol=1e-4), float((out - ref).abs().max())

from sdk.generation.runtimes import find_plugin_library  # the plugin built inside the package's copy of plugins_trt

plugin_src = cpu.native_dir("plugins_trt").resolve()
assert plugin_src.is_relative_to(venv) and (plugin_src / "CMakeLists.txt").is_file(), plugin_src
assert find_plugin_library() is None
lib = plugin_src / "build" / "libs4d_trt_plugin.so"
lib.parent.mkdir()
lib.write_bytes(b"")  # stands in for a CMake build
assert find_plugin_library() == lib, find_plugin_library()
lib.unlink()
lib.parent.rmdir()
print(f"C++ kernel in use: {info['path']} (isa {info['isa']}, openmp {info['openmp']}); sources {ext}")
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False)


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "S4D_CPP_EXT_DIR", "S4D_TRT_PLUGIN")}
    env["S4D_CACHE_DIR"] = str(tmp / "kernel-cache")  # build the kernel from the wheel's sources, not a cache
    return env


BUILD_REQUIRES = "setuptools>=68"  # pyproject.toml's [build-system] requires


def _setuptools_ok() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 68


def _build_python(tmp: Path, env: dict[str, str]) -> str:
    """An interpreter with the build backend: this one if its setuptools is new enough (no index
    round trip), else a small build venv with it installed."""
    if _setuptools_ok():
        return sys.executable
    venv = tmp / "build-venv"
    res = _run([sys.executable, "-m", "venv", str(venv)], tmp, env, 300)
    assert res.returncode == 0, res.stdout[-4000:]
    py = str(venv / "bin" / "python")
    res = _run([py, "-m", "pip", "install", "-q", BUILD_REQUIRES], tmp, env, 600)
    if res.returncode != 0 and any(m in res.stdout for m in (*NO_INDEX, "No matching distribution")):
        pytest.skip(f"pip cannot reach a package index for {BUILD_REQUIRES}: " + res.stdout[-500:])
    assert res.returncode == 0, res.stdout[-4000:]
    return py


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """sdist from the checkout, then the wheel built from that sdist (so both are proven)."""
    out = tmp_path_factory.mktemp("dist")
    env = _clean_env(out)
    py = _build_python(out, env)
    egg_info = ROOT / "sculpt4d_sdk.egg-info"
    had_egg_info = egg_info.exists()
    res = _run([py, "-c", f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"],
               ROOT, env, 300)
    if not had_egg_info:  # setuptools writes it into the checkout; leave the tree as it was
        shutil.rmtree(egg_info, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-4000:]
    sdist = out / res.stdout.strip().splitlines()[-1]
    res = _run([py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(sdist)], out, env,
               600)
    assert res.returncode == 0, res.stdout[-4000:]
    (whl,) = out.glob("sculpt4d_sdk-*.whl")
    return whl


def test_wheel_carries_the_native_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in NATIVE_FILES if n not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    for tree in ("cpp_ext", "plugins_trt"):  # every tracked source file of both trees, nothing built
        shipped = {n.split(f"sdk/_native/{tree}/", 1)[1] for n in names if n.startswith(f"sdk/_native/{tree}/")}
        in_repo = {p.relative_to(ROOT / tree).as_posix() for p in (ROOT / tree).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and not any(x.startswith("build") for x in
                                                                              p.relative_to(ROOT / tree).parts)}
        assert shipped == in_repo, f"{tree}: only in the repo {sorted(in_repo - shipped)}, " \
                                   f"only in the wheel {sorted(shipped - in_repo)}"
        assert not any(n.endswith((".so", ".o")) for n in shipped)


def test_fresh_venv_runs_the_main_command_with_the_cpp_kernel(wheel, tmp_path, ci_evidence):
    t0 = time.perf_counter()
    env = _clean_env(tmp_path)
    venv = tmp_path / "venv"
    res = _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, 300)
    assert res.returncode == 0, res.stdout[-4000:]
    py, bindir = venv / "bin" / "python", venv / "bin"
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    res = _run([str(py), "-m", "pip", "install", "-q", TORCH_PIN, str(wheel)], tmp_path, env, 1200)
    if res.returncode != 0 and any(m in res.stdout for m in NO_INDEX):
        pytest.skip("pip cannot reach a package index for torch and the dependencies: " + res.stdout[-500:])
    assert res.returncode == 0, res.stdout[-4000:]
    t_install = time.perf_counter() - t0

    work = tmp_path / "work"  # not the checkout: nothing of the repository is importable from here
    work.mkdir()
    smoke = work / "smoke.py"
    smoke.write_text(SMOKE)
    res = _run([str(py), str(smoke)], work, env, 600)
    assert res.returncode == 0, res.stdout[-4000:]
    evidence = res.stdout.strip().splitlines()[-1]
    assert evidence.startswith("C++ kernel in use"), res.stdout[-4000:]

    t1 = time.perf_counter()
    res = _run([str(bindir / "s4d-convert"), str(CLIP), "-o", "out", "--format", "glb", "--format", "usd"],
               work, env, 900)
    assert res.returncode == 0, res.stdout[-4000:]
    t_convert = time.perf_counter() - t1
    seq = work / "out" / CLIP.stem
    assert len(list(seq.glob("frame_*.glb"))) == 16, sorted(p.name for p in seq.iterdir())
    assert (seq / "sequence.usdc").is_file() or (seq / "sequence.usda").is_file()
    settings = json.loads((seq / "manifest.json").read_text())["settings"]
    assert settings["attention_backend"] == "cpp-kernel" and settings["fallbacks"] == [], settings
    assert "sculpt4d: warning" not in res.stdout, res.stdout[-4000:]
    ci_evidence(f"wheel: {wheel.name} installed into a fresh venv with {TORCH_PIN} in {t_install:.0f} s; "
                f"README main command from a temp dir in {t_convert:.0f} s; {evidence}")
