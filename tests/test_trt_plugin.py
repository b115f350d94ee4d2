"""The BlockSparseAttention TensorRT plugin (plugins_trt/src) built and used for real, on the CPU.

* compiled with CMake against NVIDIA's public TensorRT headers (10.16, the copy in
  ``../shared/third_party/tensorrt-oss``) and the tensorrt-rtx wheel's library, warnings as errors;
  syntax-checked against the 11.1 headers and against a local TensorRT where one is configured;
* the library stands alone (no libcudart / TensorRT in its NEEDED entries, two exported symbols);
* loaded into TensorRT-RTX: its creator answers for every shape the CUDA kernel supports;
* the whole chain: the embedded demo model exported and built into a DiT engine whose every
  temporal block is a plugin layer, and a graph the plugin rejects built from the ONNX function
  body instead, with a one-line reason.

The plugin's kernel never runs here (no GPU); TensorRT-RTX builds engines ahead of time.
Where the headers are absent (a user's machine) these tests skip and say how to point CMake at a
TensorRT install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from export.cli import app
from export.tensorrt import RTX_PARSER_LIBRARY, TensorRTError, plugin_rejection, prepare_rtx_parser
from sdk.kernels.cuda import KERNEL_SIZES
from sdk.sparse.attention import ONNX_DOMAIN, ONNX_OP, PLUGIN_VERSION, onnx_node_attributes
from sdk.sparse.pattern import SparsePattern

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugins_trt"
PLUGIN_SOURCE = PLUGIN_DIR / "src" / "block_sparse_attention_plugin.cpp"
INCLUDES = [PLUGIN_DIR / "core" / "include", ROOT / "cpp_ext" / "include", PLUGIN_DIR / "src"]
TENSORRT_OSS = ROOT.parent / "shared" / "third_party" / "tensorrt-oss"
HOW_TO_BUILD = ("build the plugin against your own TensorRT instead: cmake -S plugins_trt -B build/plugins_trt "
                "-DTensorRT_ROOT=/path/to/TensorRT (or -DTensorRT_RTX_ROOT=DIR with DIR/include and "
                "DIR/lib/libtensorrt_rtx.so.1, or -DTensorRT_INCLUDE_DIR=... -DTensorRT_LIBRARY=...); "
                "see plugins_trt/README.md")
# What a self-contained plugin may need at run time: the C/C++ runtime only (cudart is static,
# TensorRT is already in the process that loads it).
ALLOWED_NEEDED = {"libstdc++.so.6", "libgcc_s.so.1", "libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2",
                  "ld-linux-aarch64.so.1", "libdl.so.2", "libpthread.so.0", "librt.so.1"}


def oss_headers(version: str) -> Path:
    include = TENSORRT_OSS / version / "include"
    if not (include / "NvInferRuntime.h").is_file():
        pytest.skip(f"NVIDIA's TensorRT {version} headers are not at {include} (CI provides them); {HOW_TO_BUILD}")
    return include


def local_tensorrt_headers() -> tuple[Path, bool]:
    """(include dir, is TensorRT-RTX) of a TensorRT the user configured, from where CMake looks."""
    for var, rtx in (("TensorRT_RTX_ROOT", True), ("TENSORRT_RTX_ROOT", True), ("TensorRT_ROOT", False),
                     ("TENSORRT_ROOT", False)):
        root = os.environ.get(var)
        if root and (Path(root) / "include" / "NvInferRuntime.h").exists():
            return Path(root) / "include", rtx
    for d in ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/local/tensorrt/include",
              "/opt/tensorrt/include", "/usr/include"):
        if (Path(d) / "NvInferRuntime.h").exists():
            return Path(d), False
    pytest.skip(f"no local TensorRT C++ headers (TensorRT_ROOT / TensorRT_RTX_ROOT unset); {HOW_TO_BUILD}")


def cuda_headers() -> Path:
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if shutil.which("nvcc"):
        candidates.append(str(Path(shutil.which("nvcc")).resolve().parent.parent))
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime_api.h").exists():
            return Path(c) / "include"
    pytest.skip("CUDA headers (cuda_runtime_api.h) not found (set CUDA_HOME)")


def syntax_check(include: Path, rtx: bool) -> None:
    compiler = next((shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)),
                    None)
    if compiler is None:
        pytest.skip("no C++ compiler found")
    cmd = [compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-isystem{include}",
           f"-isystem{cuda_headers()}", *[f"-I{p}" for p in INCLUDES], *(["-DS4D_TRT_RTX=1"] if rtx else []),
           str(PLUGIN_SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("version", ["10.16", "11.1"])
@pytest.mark.parametrize("rtx", [False, True], ids=["tensorrt", "tensorrt-rtx"])
def test_plugin_sources_compile_against_nvidia_headers(version, rtx):
    syntax_check(oss_headers(version), rtx)


def test_plugin_sources_compile_against_a_local_tensorrt():
    syntax_check(*local_tensorrt_headers())


# ----------------------------------------------------------------------------------------------
# the CMake build (TensorRT-RTX flavour: public headers + the wheel's library)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rtx_library() -> Path:
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'sculpt4d-sdk[trt-rtx]')")
    import tensorrt_rtx_libs

    lib = Path(tensorrt_rtx_libs.__file__).resolve().parent / (RTX_PARSER_LIBRARY + ".1")
    assert lib.is_file(), lib
    return lib


@pytest.fixture(scope="session")
def plugin_library(tmp_path_factory, rtx_library, ci_evidence) -> Path:
    """libs4d_trt_plugin.so, built once per session outside the repository's build/ (which the
    builder would otherwise find on its own)."""
    headers = oss_headers("10.16")
    cmake = shutil.which("cmake")
    if cmake is None or shutil.which("nvcc") is None:
        pytest.skip("cmake and nvcc are needed to build the plugin")
    build = tmp_path_factory.mktemp("plugins_trt_build")
    t0 = time.perf_counter()
    configure = subprocess.run([cmake, "-S", str(PLUGIN_DIR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                                f"-DTensorRT_INCLUDE_DIR={headers}", f"-DTensorRT_LIBRARY={rtx_library}",
                                "-DS4D_WERROR=ON"], capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    assert f"TensorRT-RTX: headers {headers}, library {rtx_library}: building s4d_trt_plugin" in configure.stdout
    compiled = subprocess.run([cmake, "--build", str(build), "--target", "s4d_trt_plugin", "-j", "2"],
                              capture_output=True, text=True, timeout=1200)
    output = compiled.stdout + compiled.stderr
    assert compiled.returncode == 0, output
    assert "warning" not in output.lower(), output
    library = build / "libs4d_trt_plugin.so"
    assert library.is_file()
    ci_evidence(f"plugins_trt: built libs4d_trt_plugin.so with CMake against NVIDIA's TensorRT 10.16 headers "
                f"({headers}) and {rtx_library.name} of tensorrt-rtx, -Werror, sm_80/86/89/90, "
                f"in {time.perf_counter() - t0:.0f} s")
    return library


@pytest.mark.parametrize("flavour", ["TensorRT_RTX_ROOT", "TensorRT_ROOT"])
def test_cmake_finds_an_install_root(tmp_path, flavour):
    """A user's layout: ROOT/include + ROOT/lib/<library> (configure only: the library here is a
    stand-in file, which the configure step only locates)."""
    headers = oss_headers("10.16")
    cmake = shutil.which("cmake")
    if cmake is None or shutil.which("nvcc") is None:
        pytest.skip("cmake and nvcc are needed to configure the plugin")
    root = tmp_path / "tensorrt"
    (root / "lib").mkdir(parents=True)
    (root / "include").symlink_to(headers)
    name = "libtensorrt_rtx.so.1" if flavour == "TensorRT_RTX_ROOT" else "libnvinfer.so.10"
    (root / "lib" / name).write_bytes(b"")
    proc = subprocess.run([cmake, "-S", str(PLUGIN_DIR), "-B", str(tmp_path / "build"), f"-D{flavour}={root}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = "TensorRT-RTX" if flavour == "TensorRT_RTX_ROOT" else "TensorRT"
    assert f"-- {label}: headers {root / 'include'}, library {root / 'lib' / name}: building s4d_trt_plugin" \
        in proc.stdout, proc.stdout


def _readelf(library: Path, flag: str) -> str:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) not found")
    return subprocess.run([readelf, flag, "-W", str(library)], capture_output=True, text=True, check=True).stdout


def test_plugin_library_stands_alone(plugin_library, ci_evidence):
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf(plugin_library, "-d")))
    assert needed and needed <= ALLOWED_NEEDED, sorted(needed - ALLOWED_NEEDED)
    exported = set()
    for line in _readelf(plugin_library, "--dyn-syms").splitlines():
        fields = line.split()
        # Num: Value Size Type Bind Vis Ndx Name - defined global functions only
        if len(fields) >= 8 and fields[3] == "FUNC" and fields[4] == "GLOBAL" and fields[6] != "UND":
            exported.add(fields[7].split("@")[0])
    assert exported == {"getCreators", "setLoggerFinder"}, sorted(exported)
    ci_evidence(f"plugins_trt: NEEDED = {sorted(needed)} (CUDA runtime linked statically); exports {sorted(exported)}")


def test_plugin_loads_in_tensorrt_rtx_and_accepts_every_kernel_size(plugin_library):
    import tensorrt_rtx as trt

    registry = trt.get_plugin_registry()
    if registry.get_creator(ONNX_OP, PLUGIN_VERSION, ONNX_DOMAIN) is None:
        assert registry.load_library(str(plugin_library)) is not None
    creator = registry.get_creator(ONNX_OP, PLUGIN_VERSION, ONNX_DOMAIN)
    assert creator is not None and creator.name == ONNX_OP and creator.plugin_namespace == ONNX_DOMAIN
    pattern = SparsePattern.for_tokens(4, 128, 32, "sculpt4d", True)
    attrs = onnx_node_attributes(pattern, 32, 4, 32, 32 ** -0.5)
    assert {f.name for f in creator.field_names} == set(attrs)
    for head_dim in KERNEL_SIZES:
        for block in KERNEL_SIZES:
            pattern = SparsePattern.for_tokens(3, 4 * block, block, "sculpt4d", True)
            attrs = onnx_node_attributes(pattern, block, 2, head_dim, head_dim ** -0.5)
            assert plugin_rejection(trt, attrs) is None, (head_dim, block)
    pattern = SparsePattern.for_tokens(3, 96, 48, "sculpt4d", True)
    reason = plugin_rejection(trt, onnx_node_attributes(pattern, 48, 2, 32, 0.2))
    assert reason is not None and "block_size=48" in reason


# ----------------------------------------------------------------------------------------------
# the chain: ONNX export -> TensorRT-RTX engines with the plugin
# ----------------------------------------------------------------------------------------------


def _build(args, library, monkeypatch):
    monkeypatch.setenv("S4D_TRT_PLUGIN", str(library))
    result = CliRunner().invoke(app, ["build", "--target", "tensorrt-rtx", "--precision", "fp16", *args])
    assert result.exit_code == 0, result.output
    return result


def test_demo_dit_engine_is_built_with_the_plugin(plugin_library, tmp_path, monkeypatch, ci_evidence):
    engines = tmp_path / "engines"
    t0 = time.perf_counter()
    first = _build(["--frames", "4", "--checkpoint", "default", "--engine-dir", str(engines)], plugin_library,
                   monkeypatch)
    seconds = time.perf_counter() - t0
    assert f"plugin: loaded {plugin_library}" in first.output or "already registered" in first.output
    entries = json.loads((engines / "manifest.json").read_text())["engines"]
    dit = entries["dit_t4.engine"]
    depth = dit["configs"]["dit_config"]["depth"]
    node = dit["block_sparse_node"]
    assert (node["head_dim"], node["block_size"]) == (32, 32)  # the demo's shapes
    assert dit["plugin_layers"] == depth == 7
    assert all(entries[n]["plugin_layers"] == 0 for n in ("vae_decoder.engine", "vae_query.engine",
                                                          "conditioner.engine"))
    shown = CliRunner().invoke(app, ["inspect", str(engines)])
    assert shown.exit_code == 0, shown.output
    assert "plugin_layers=7 (BlockSparseAttention plugin)" in shown.output
    assert shown.output.count("no BlockSparseAttention node") == 3 and "plugin=no" not in shown.output
    ci_evidence(f"tensorrt-rtx: demo DiT engine (T=4, head_dim 32, block 32) built with plugin_layers={dit['plugin_layers']}"
                f" = {depth} DiT blocks; 4 engines in {seconds:.0f} s")

    again = _build(["--frames", "4", "--checkpoint", "default", "--engine-dir", str(engines)], plugin_library,
                   monkeypatch)
    assert "cache hit: dit_t4.engine" in again.output and "4 reused" in again.output


def test_rejected_attributes_build_the_function_body(plugin_library, tmp_path, monkeypatch):
    engines = tmp_path / "engines"
    result = _build(["--frames", "2", "--checkpoint", "tiny", "--block-size", "8", "--engine-dir", str(engines)],
                    plugin_library, monkeypatch)
    lines = [ln for ln in result.output.splitlines() if "plugin not used" in ln]
    assert len(lines) == 1 and "block_size=8" in lines[0] and "ONNX function body instead" in lines[0], result.output
    dit = json.loads((engines / "manifest.json").read_text())["engines"]["dit_t2.engine"]
    assert dit["plugin_layers"] == 0 and dit["plugin_loaded"] is True
    shown = CliRunner().invoke(app, ["inspect", str(engines)])
    assert "plugin_layers=0 (ONNX function body)" in shown.output


# ----------------------------------------------------------------------------------------------
# the RTX parser's library name
# ----------------------------------------------------------------------------------------------


def test_prepare_rtx_parser_creates_the_link_once(tmp_path):
    (tmp_path / (RTX_PARSER_LIBRARY + ".1")).write_bytes(b"\x7fELF")
    said = []
    prepare_rtx_parser(said.append, tmp_path)
    link = tmp_path / RTX_PARSER_LIBRARY
    assert link.is_symlink() and os.readlink(link) == RTX_PARSER_LIBRARY + ".1" and len(said) == 1
    prepare_rtx_parser(said.append, tmp_path)  # present: nothing to do
    assert len(said) == 1


def test_prepare_rtx_parser_never_replaces_and_says_what_to_run(tmp_path, monkeypatch):
    (tmp_path / (RTX_PARSER_LIBRARY + ".1")).write_bytes(b"\x7fELF")
    own = tmp_path / RTX_PARSER_LIBRARY
    own.write_bytes(b"a user's file")  # not ours: left alone
    prepare_rtx_parser(lambda m: None, tmp_path)
    assert own.read_bytes() == b"a user's file"
    own.unlink()
    own.symlink_to("nowhere.so")
    with pytest.raises(TensorRTError, match="broken symlink.*ln -sfn"):
        prepare_rtx_parser(lambda m: None, tmp_path)
    own.unlink()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "symlink", refuse)
    with pytest.raises(TensorRTError, match=re.escape(f"run: ln -s {RTX_PARSER_LIBRARY}.1 {own}")):
        prepare_rtx_parser(lambda m: None, tmp_path)
    assert not own.exists() and not own.is_symlink()


def test_a_failed_plugin_build_falls_back_to_the_function_body(plugin_library, tmp_path, monkeypatch):
    import export.builder as builder

    real = builder.build_engine

    def plugin_build_fails(path, *args, use_plugin=True, **kwargs):
        if use_plugin and Path(path).name == "dit.onnx":  # e.g. configurePlugin rejects what the parser gives it
            raise TensorRTError("tensorrt-rtx failed to build an engine from dit.onnx (see the log above)")
        return real(path, *args, use_plugin=use_plugin, **kwargs)

    monkeypatch.setattr(builder, "build_engine", plugin_build_fails)
    engines = tmp_path / "engines"
    result = _build(["--frames", "2", "--checkpoint", "tiny", "--engine-dir", str(engines)], plugin_library,
                    monkeypatch)
    assert "dit_t2.engine: building with the BlockSparseAttention plugin failed" in result.output
    dit = json.loads((engines / "manifest.json").read_text())["engines"]["dit_t2.engine"]
    assert dit["plugin_layers"] == 0 and "failed to build" in dit["plugin_fallback"]
    again = _build(["--frames", "2", "--checkpoint", "tiny", "--engine-dir", str(engines)], plugin_library,
                   monkeypatch)  # the same library would fail the same way: no rebuild loop
    assert "cache hit: dit_t2.engine" in again.output and "4 reused" in again.output
