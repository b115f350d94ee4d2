"""The TensorRT plugin's TensorRT-independent core (plugins_trt/core), tested through its C ABI.

The core is compiled here with the system C++ compiler into a temporary shared library and
driven with ctypes: its CSR lists must equal ``SparsePattern.kv_block_lists()`` (the one home of
the mask logic), its field table must equal the ONNX node attributes, and its validation,
serialisation, workspace and shape/dtype rules are checked with their error messages. The
plugin itself (plugins_trt/src) is built against real TensorRT headers in test_trt_plugin.py; here
the CMake project is configured without them to prove the core-only fallback.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sdk.sparse.attention import ONNX_DOMAIN, ONNX_OP, PLUGIN_VERSION, onnx_node_attributes
from sdk.sparse.pattern import PRESETS, SparsePattern

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugins_trt"
CPP_EXT = ROOT / "cpp_ext"
CORE_SOURCES = [PLUGIN_DIR / "core" / "src" / "plugin_core.cpp", PLUGIN_DIR / "core" / "src" / "plugin_core_c.cpp"]
CORE_INCLUDES = [PLUGIN_DIR / "core" / "include", CPP_EXT / "include"]
KERNEL_HOST_SOURCE = CPP_EXT / "cuda" / "block_sparse_attention_host.cpp"
PLUGIN_SOURCE = PLUGIN_DIR / "src" / "block_sparse_attention_plugin.cpp"
SKIP_MESSAGE = "TensorRT headers not found: building only s4d_plugin_core"

# C ABI constants (plugins_trt/core/include/s4d_trt/plugin_core_c.h)
OK, ERR_INVALID, ERR_FIELD, ERR_SERIAL, ERR_SHAPE, ERR_DTYPE, ERR_BUFFER, ERR_NULL = range(8)
INT32, INT64, FLOAT32, FLOAT64, CHAR, BYTES = range(6)
MAX_SCHEDULE = 64
DTYPE_F32, DTYPE_BF16, DTYPE_F16 = 0, 1, 2


class Attrs(ctypes.Structure):
    _fields_ = [("num_frames", ctypes.c_int32), ("tokens_per_frame", ctypes.c_int32),
                ("block_size", ctypes.c_int32), ("anchor", ctypes.c_int32), ("num_heads", ctypes.c_int32),
                ("head_dim", ctypes.c_int32), ("scale", ctypes.c_float), ("schedule_len", ctypes.c_int32),
                ("schedule", ctypes.c_int32 * MAX_SCHEDULE)]


DEFAULT = dict(num_frames=4, tokens_per_frame=512, block_size=128, schedule=(1, 1, 2, 4, 8, 16), anchor=1,
               num_heads=16, head_dim=128, scale=1 / math.sqrt(128))


def make_attrs(**overrides) -> Attrs:
    values = {**DEFAULT, **overrides}
    a = Attrs()
    for name in ("num_frames", "tokens_per_frame", "block_size", "anchor", "num_heads", "head_dim"):
        setattr(a, name, int(values[name]))
    a.scale = float(values["scale"])
    schedule = list(values["schedule"])
    a.schedule_len = values.get("schedule_len", len(schedule))
    for i, s in enumerate(schedule[:MAX_SCHEDULE]):
        a.schedule[i] = s
    return a


def attrs_dict(a: Attrs) -> dict:
    return dict(num_frames=a.num_frames, tokens_per_frame=a.tokens_per_frame, block_size=a.block_size,
                schedule=tuple(a.schedule[:a.schedule_len]), anchor=a.anchor, num_heads=a.num_heads,
                head_dim=a.head_dim, scale=a.scale)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ----------------------------------------------------------------------------------------------
# building and loading the core
# ----------------------------------------------------------------------------------------------


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("no C++ compiler (g++ / c++ / clang++) found")


def _compile(sources, out: Path, extra=()) -> Path:
    cmd = [_compiler(), "-std=c++17", "-O1", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra",
           *[f"-I{p}" for p in CORE_INCLUDES], *extra, *map(str, sources), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"compiling {out.name} failed:\n{proc.stderr}"
    return out


class Core:
    """ctypes view of libs4d_plugin_core_c."""

    def __init__(self, path: Path) -> None:
        lib = self.lib = ctypes.CDLL(str(path))
        P = ctypes.POINTER
        err = [ctypes.c_char_p, ctypes.c_size_t]
        sig = {
            "s4d_plugin_core_abi_version": (ctypes.c_int, []),
            "s4d_plugin_core_serial_format_version": (ctypes.c_int, []),
            "s4d_plugin_core_plugin_name": (ctypes.c_char_p, []),
            "s4d_plugin_core_plugin_version": (ctypes.c_char_p, []),
            "s4d_plugin_core_plugin_namespace": (ctypes.c_char_p, []),
            "s4d_plugin_core_state_field_name": (ctypes.c_char_p, []),
            "s4d_plugin_core_field_count": (ctypes.c_int, []),
            "s4d_plugin_core_field_name": (ctypes.c_char_p, [ctypes.c_int]),
            "s4d_plugin_core_field_kind": (ctypes.c_int, [ctypes.c_int]),
            "s4d_plugin_core_field_is_list": (ctypes.c_int, [ctypes.c_int]),
            "s4d_plugin_core_field_required": (ctypes.c_int, [ctypes.c_int]),
            "s4d_plugin_core_parse_fields": (ctypes.c_int, [ctypes.c_int32, P(ctypes.c_char_p), P(ctypes.c_int32),
                                                            P(ctypes.c_void_p), P(ctypes.c_int32), ctypes.c_int32,
                                                            P(Attrs), *err]),
            "s4d_plugin_core_validate": (ctypes.c_int, [P(Attrs), *err]),
            "s4d_plugin_core_csr_size": (ctypes.c_int, [P(Attrs), P(ctypes.c_int64), P(ctypes.c_int64), *err]),
            "s4d_plugin_core_build_csr": (ctypes.c_int, [P(Attrs), ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                                         ctypes.c_int64, *err]),
            "s4d_plugin_core_serialize": (ctypes.c_int, [P(Attrs), ctypes.c_char_p, ctypes.c_size_t,
                                                         P(ctypes.c_size_t), *err]),
            "s4d_plugin_core_deserialize": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_size_t, P(Attrs), *err]),
            "s4d_plugin_core_roundtrip": (ctypes.c_int, [P(Attrs), *err]),
            "s4d_plugin_core_workspace_size": (ctypes.c_int64, [P(Attrs), *err]),
            "s4d_plugin_core_csr_device_layout": (ctypes.c_int, [P(Attrs), *[P(ctypes.c_int64)] * 4, *err]),
            "s4d_plugin_core_check_shapes": (ctypes.c_int, [P(Attrs), ctypes.c_int32, P(P(ctypes.c_int64)),
                                                            P(ctypes.c_int32), ctypes.c_int32, *err]),
            "s4d_plugin_core_check_dtype": (ctypes.c_int, [ctypes.c_int32, *err]),
            "s4d_plugin_core_describe": (ctypes.c_int, [P(Attrs), ctypes.c_char_p, ctypes.c_size_t]),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes

    def call(self, name: str, *args) -> tuple[int, str]:
        buf = ctypes.create_string_buffer(1024)
        rc = getattr(self.lib, name)(*args, buf, len(buf))
        return rc, buf.value.decode()

    # -- wrappers ---------------------------------------------------------------------------
    def validate(self, a: Attrs) -> tuple[int, str]:
        return self.call("s4d_plugin_core_validate", ctypes.byref(a))

    def csr(self, a: Attrs) -> tuple[np.ndarray, np.ndarray]:
        rows, nnz = ctypes.c_int64(), ctypes.c_int64()
        rc, msg = self.call("s4d_plugin_core_csr_size", ctypes.byref(a), ctypes.byref(rows), ctypes.byref(nnz))
        assert rc == OK, msg
        offsets = np.zeros(rows.value + 1, dtype=np.int32)
        indices = np.zeros(max(nnz.value, 1), dtype=np.int32)
        rc, msg = self.call("s4d_plugin_core_build_csr", ctypes.byref(a), offsets.ctypes.data, offsets.size,
                            indices.ctypes.data, nnz.value)
        assert rc == OK, msg
        return offsets, indices[:nnz.value]

    def serialize(self, a: Attrs) -> bytes:
        size = ctypes.c_size_t()
        rc, msg = self.call("s4d_plugin_core_serialize", ctypes.byref(a), None, 0, ctypes.byref(size))
        assert rc == OK, msg
        buf = ctypes.create_string_buffer(size.value)
        rc, msg = self.call("s4d_plugin_core_serialize", ctypes.byref(a), buf, size.value, ctypes.byref(size))
        assert rc == OK, msg
        return buf.raw[:size.value]

    def deserialize(self, blob: bytes) -> tuple[int, str, Attrs]:
        out = Attrs()
        rc, msg = self.call("s4d_plugin_core_deserialize", blob, len(blob), ctypes.byref(out))
        return rc, msg, out

    def parse(self, fields: list[tuple], phase: int = 0) -> tuple[int, str, Attrs]:
        """fields: (name, kind, value[, length override]); values are converted to C buffers."""
        n = len(fields)
        names, kinds = (ctypes.c_char_p * n)(), (ctypes.c_int32 * n)()
        data, lengths = (ctypes.c_void_p * n)(), (ctypes.c_int32 * n)()
        keep = []
        np_types = {INT32: np.int32, INT64: np.int64, FLOAT32: np.float32, FLOAT64: np.float64}
        for i, field in enumerate(fields):
            name, kind, value = field[:3]
            names[i], kinds[i] = name.encode() if name is not None else None, kind
            if isinstance(value, (bytes, str)):
                raw = value.encode() if isinstance(value, str) else value
                buf = ctypes.create_string_buffer(raw, max(len(raw), 1))
                data[i], lengths[i] = ctypes.cast(buf, ctypes.c_void_p), len(raw)
                keep.append(buf)
            else:
                arr = np.ascontiguousarray(np.atleast_1d(np.asarray(value, dtype=np_types.get(kind, np.int32))))
                data[i], lengths[i] = arr.ctypes.data, arr.size
                keep.append(arr)
            if len(field) > 3:
                lengths[i] = field[3]
        out = Attrs()
        rc, msg = self.call("s4d_plugin_core_parse_fields", n, names, kinds, data, lengths, phase, ctypes.byref(out))
        return rc, msg, out

    def check_shapes(self, a: Attrs, shapes: list[tuple[int, ...]], wildcards: bool = False) -> tuple[int, str]:
        arrays = [(ctypes.c_int64 * max(len(s), 1))(*s) for s in shapes]
        dims = (ctypes.POINTER(ctypes.c_int64) * len(shapes))(*[ctypes.cast(x, ctypes.POINTER(ctypes.c_int64))
                                                                for x in arrays])
        nb = (ctypes.c_int32 * len(shapes))(*[len(s) for s in shapes])
        return self.call("s4d_plugin_core_check_shapes", ctypes.byref(a), len(shapes), dims, nb, int(wildcards))


@pytest.fixture(scope="session")
def core(tmp_path_factory) -> Core:
    out = tmp_path_factory.mktemp("plugin_core") / "libs4d_plugin_core_c.so"
    return Core(_compile(CORE_SOURCES, out))


@pytest.fixture(scope="session")
def kernel_host(tmp_path_factory):
    """cpp_ext's host-side CUDA argument / CSR validator (plain C++, no CUDA needed)."""
    if not KERNEL_HOST_SOURCE.exists():
        pytest.skip(f"{KERNEL_HOST_SOURCE} not present")
    lib = ctypes.CDLL(str(_compile([KERNEL_HOST_SOURCE], tmp_path_factory.mktemp("kernel_host") / "libhost.so",
                                   extra=["-fvisibility=default"])))
    lib.s4d_bsa_check_args_cuda.restype = ctypes.c_int
    lib.s4d_bsa_check_args_cuda.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_float, ctypes.c_int, ctypes.c_void_p,
                                                                   ctypes.c_void_p, ctypes.c_int64]
    lib.s4d_bsa_cuda_supported.restype = ctypes.c_int
    lib.s4d_bsa_cuda_supported.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.s4d_bsa_cuda_last_error.restype = ctypes.c_char_p
    return lib


# ----------------------------------------------------------------------------------------------
# identity and the field table
# ----------------------------------------------------------------------------------------------


def node_attributes(pattern=None, block_size=128, num_heads=16, head_dim=128, scale=0.125) -> dict:
    pattern = pattern or SparsePattern.for_tokens(4, 512, block_size)
    return onnx_node_attributes(pattern, block_size, num_heads, head_dim, scale)


def test_identity_matches_the_onnx_node(core):
    lib = core.lib
    assert lib.s4d_plugin_core_abi_version() == 1
    assert lib.s4d_plugin_core_serial_format_version() == 1
    assert lib.s4d_plugin_core_plugin_name().decode() == ONNX_OP
    assert lib.s4d_plugin_core_plugin_version().decode() == PLUGIN_VERSION
    assert lib.s4d_plugin_core_plugin_namespace().decode() == ONNX_DOMAIN
    attrs = node_attributes()
    assert attrs["plugin_version"] == PLUGIN_VERSION and attrs["plugin_namespace"] == ONNX_DOMAIN


def test_field_table_is_exactly_the_onnx_node_attributes(core):
    lib = core.lib
    n = lib.s4d_plugin_core_field_count()
    names = [lib.s4d_plugin_core_field_name(i).decode() for i in range(n)]
    assert names == list(node_attributes())  # same names, same order
    assert lib.s4d_plugin_core_field_name(n) is None and lib.s4d_plugin_core_field_kind(-1) == -1
    kinds = {name: lib.s4d_plugin_core_field_kind(i) for i, name in enumerate(names)}
    # INT / INTS arrive as kINT32, FLOAT as kFLOAT32, STRING as kCHAR
    assert kinds == {"num_frames": INT32, "tokens_per_frame": INT32, "block_size": INT32, "schedule": INT32,
                     "anchor": INT32, "num_heads": INT32, "head_dim": INT32, "scale": FLOAT32,
                     "plugin_version": CHAR, "plugin_namespace": CHAR}
    lists = [name for i, name in enumerate(names) if lib.s4d_plugin_core_field_is_list(i)]
    optional = [name for i, name in enumerate(names) if not lib.s4d_plugin_core_field_required(i)]
    assert lists == ["schedule"] and optional == ["plugin_version", "plugin_namespace"]


# ----------------------------------------------------------------------------------------------
# CSR == SparsePattern.kv_block_lists()
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("anchor", [True, False], ids=["anchor", "no-anchor"])
@pytest.mark.parametrize("schedule", list(PRESETS.values()) + [(3,), (2, 5, 1), (7, 3, 64)],
                         ids=list(PRESETS) + ["s3", "s2-5-1", "s7-3-64"])
def test_csr_equals_sparse_pattern(core, schedule, anchor):
    for frames in (1, 2, 5, 8, 16, 32):
        for blocks in (1, 2, 3, 5, 8, 32):
            block_size = 64 if (frames + blocks) % 2 else 128
            a = make_attrs(num_frames=frames, tokens_per_frame=blocks * block_size, block_size=block_size,
                           schedule=schedule, anchor=int(anchor))
            offsets, indices = core.csr(a)
            ref_offsets, ref_indices = SparsePattern(frames, blocks, schedule, anchor).kv_block_lists()
            np.testing.assert_array_equal(offsets, ref_offsets.numpy(), err_msg=f"T={frames} G={blocks}")
            np.testing.assert_array_equal(indices, ref_indices.numpy(), err_msg=f"T={frames} G={blocks}")


def test_csr_buffer_capacity_is_checked(core):
    a = make_attrs(num_frames=2, tokens_per_frame=256, block_size=128)
    offsets = np.zeros(5, dtype=np.int32)
    indices = np.zeros(3, dtype=np.int32)  # too small: 2 frames x 2 blocks, dense -> 16 entries
    rc, msg = core.call("s4d_plugin_core_build_csr", ctypes.byref(a), offsets.ctypes.data, offsets.size,
                        indices.ctypes.data, indices.size)
    assert rc == ERR_BUFFER and "need 5 offsets and 16 indices" in msg


def test_csr_passes_the_kernel_host_validator(core, kernel_host):
    for schedule, anchor, frames, blocks in [(PRESETS["sculpt4d"], 1, 16, 32), (PRESETS["aggressive"], 0, 8, 5),
                                             (PRESETS["full"], 1, 3, 2), ((3,), 0, 1, 1)]:
        a = make_attrs(num_frames=frames, tokens_per_frame=blocks * 64, block_size=64, schedule=schedule,
                       anchor=anchor)
        offsets, indices = core.csr(a)
        rc = kernel_host.s4d_bsa_check_args_cuda(a.num_heads, frames * blocks * 64, a.head_dim, 64, frames * blocks,
                                                 a.scale, DTYPE_F16, offsets.ctypes.data, indices.ctypes.data,
                                                 indices.size)
        assert rc == 0, kernel_host.s4d_bsa_cuda_last_error().decode()


def test_supported_sizes_agree_with_the_kernel(core, kernel_host):
    for head_dim in (32, 64, 96, 128, 256):
        for block_size in (8, 16, 32, 48, 64, 128, 256):
            a = make_attrs(head_dim=head_dim, block_size=block_size, tokens_per_frame=4 * block_size)
            core_ok = core.validate(a)[0] == OK
            assert core_ok == bool(kernel_host.s4d_bsa_cuda_supported(head_dim, block_size, DTYPE_F16)), \
                (head_dim, block_size)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def test_default_attributes_are_valid(core):
    assert core.validate(make_attrs()) == (OK, "")


@pytest.mark.parametrize("overrides, message", [
    (dict(num_frames=0), "num_frames must be >= 1, got 0"),
    (dict(tokens_per_frame=100, block_size=64), "tokens_per_frame (100) must be a positive multiple of block_size (64)"),
    (dict(tokens_per_frame=0), "tokens_per_frame (0) must be a positive multiple"),
    (dict(block_size=48, tokens_per_frame=96), "block_size 48 is not supported by the CUDA kernel (supported: 16, 32, 64, 128)"),
    (dict(block_size=8, tokens_per_frame=128), "block_size 8 is not supported by the CUDA kernel"),
    (dict(head_dim=96), "head_dim 96 is not supported by the CUDA kernel (supported: 16, 32, 64, 128)"),
    (dict(schedule=(1, 0, 2)), "schedule strides must be positive integers, got [1, 0, 2] (entry 1 is 0)"),
    (dict(schedule=(-4,)), "schedule strides must be positive integers, got [-4]"),
    (dict(schedule=()), "schedule must contain at least one stride"),
    (dict(schedule=(1,) * 64, schedule_len=65), "schedule has 65 strides; at most 64 are supported"),
    (dict(anchor=2), "anchor must be 0 or 1, got 2"),
    (dict(num_heads=0), "num_heads must be >= 1, got 0"),
    (dict(scale=float("inf")), "scale must be finite, got inf"),
    (dict(scale=float("nan")), "scale must be finite, got nan"),
    (dict(num_frames=100000, tokens_per_frame=128), "query blocks; at most 46340 are supported"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_validation_errors(core, overrides, message):
    rc, msg = core.validate(make_attrs(**overrides))
    assert rc == ERR_INVALID and message in msg, msg


# ----------------------------------------------------------------------------------------------
# parsing the creator's field collection
# ----------------------------------------------------------------------------------------------


def onnx_fields(attrs: dict) -> list[tuple]:
    """The fields TensorRT's ONNX parser hands the creator for a real node with these
    attributes: INT / INTS -> kINT32, FLOAT -> kFLOAT32, STRING -> kCHAR."""
    from onnx import AttributeProto, helper

    node = helper.make_node(ONNX_OP, ["q", "k", "v"], ["out"], domain=ONNX_DOMAIN, **attrs)
    fields = []
    for a in node.attribute:
        if a.type == AttributeProto.INT:
            fields.append((a.name, INT32, a.i))
        elif a.type == AttributeProto.INTS:
            fields.append((a.name, INT32, list(a.ints)))
        elif a.type == AttributeProto.FLOAT:
            fields.append((a.name, FLOAT32, a.f))
        elif a.type == AttributeProto.STRING:
            fields.append((a.name, CHAR, a.s))
        else:
            raise AssertionError(f"unexpected attribute type for {a.name}")
    return fields


def test_parse_fields_from_an_onnx_node(core):
    pattern = SparsePattern.for_tokens(8, 4096, 128, "aggressive", anchor=False)
    attrs = node_attributes(pattern, 128, 16, 128, 1 / math.sqrt(128))
    rc, msg, out = core.parse(onnx_fields(attrs))
    assert rc == OK, msg
    got = attrs_dict(out)
    assert got == dict(num_frames=8, tokens_per_frame=4096, block_size=128, schedule=PRESETS["aggressive"], anchor=0,
                       num_heads=16, head_dim=128, scale=np.float32(1 / math.sqrt(128)))


def test_parse_fields_accepts_optional_strings_nuls_and_int64(core):
    fields = [f for f in onnx_fields(node_attributes()) if not f[0].startswith("plugin_")]
    assert core.parse(fields)[0] == OK  # plugin_version / plugin_namespace are optional
    fields += [("plugin_version", CHAR, b"1\x00"), ("plugin_namespace", CHAR, b"s4d")]
    assert core.parse(fields)[0] == OK
    as_int64 = [(n, INT64, v) if k == INT32 else (n, k, v) for n, k, v in fields]
    assert core.parse(as_int64)[0] == OK


def _replace(fields, name, new):
    return [new if f[0] == name else f for f in fields]


@pytest.mark.parametrize("edit, code, message", [
    (lambda f: f + [("window", INT32, 3)], ERR_FIELD, "unknown field 'window' (BlockSparseAttention accepts: num_frames"),
    (lambda f: [x for x in f if x[0] != "head_dim"], ERR_FIELD, "missing required field(s): head_dim"),
    (lambda f: [x for x in f if x[0] not in ("scale", "anchor")], ERR_FIELD, "missing required field(s): anchor, scale"),
    (lambda f: f + [("num_heads", INT32, 16)], ERR_FIELD, "duplicate field 'num_heads'"),
    (lambda f: _replace(f, "scale", ("scale", INT32, 1)), ERR_FIELD, "field 'scale' must be a float (kFLOAT32), got int32"),
    (lambda f: _replace(f, "num_frames", ("num_frames", FLOAT32, 4.0)), ERR_FIELD,
     "field 'num_frames' must be an integer (kINT32), got float32"),
    (lambda f: _replace(f, "num_heads", ("num_heads", INT32, [16, 16])), ERR_FIELD,
     "field 'num_heads' must hold exactly 1 value, got 2"),
    (lambda f: _replace(f, "plugin_version", ("plugin_version", CHAR, "2")), ERR_FIELD,
     "field 'plugin_version' is \"2\" but this plugin is s4d::BlockSparseAttention version 1"),
    (lambda f: _replace(f, "plugin_namespace", ("plugin_namespace", CHAR, "trt")), ERR_FIELD,
     "(expected \"s4d\")"),
    (lambda f: _replace(f, "num_frames", ("num_frames", INT64, 2 ** 40)), ERR_FIELD, "out of the int32 range"),
    (lambda f: _replace(f, "anchor", ("anchor", 99, 1)), ERR_FIELD, "must be an integer (kINT32), got an unsupported type"),
    (lambda f: _replace(f, "schedule", ("schedule", INT32, [1, 0])), ERR_INVALID,
     "schedule strides must be positive integers, got [1, 0]"),
    (lambda f: _replace(f, "schedule", ("schedule", INT32, [1], 0)), ERR_INVALID, "schedule must contain at least one stride"),
    (lambda f: _replace(f, "tokens_per_frame", ("tokens_per_frame", INT32, 500)), ERR_INVALID,
     "tokens_per_frame (500) must be a positive multiple of block_size (128)"),
    (lambda f: [(None, INT32, 1)] + f, ERR_FIELD, "field #0 has no name"),
])
def test_parse_fields_errors(core, edit, code, message):
    rc, msg, _ = core.parse(edit(onnx_fields(node_attributes())))
    assert rc == code and message in msg, msg


def test_runtime_phase_reads_the_serialised_fields(core):
    a = make_attrs(num_frames=5, schedule=PRESETS["conservative"], anchor=0, head_dim=64, scale=0.3)
    blob = core.serialize(a)
    named = [(k, INT32, v) for k, v in attrs_dict(a).items() if k != "scale"] + [("scale", FLOAT32, a.scale)]
    # what getFieldsToSerialize writes: the named attributes + the state blob
    rc, msg, out = core.parse(named + [("s4d_state", BYTES, blob)], phase=1)
    assert rc == OK, msg
    assert attrs_dict(out) == attrs_dict(a)
    rc, msg, out = core.parse([("s4d_state", BYTES, blob)], phase=1)  # the blob alone suffices
    assert rc == OK and attrs_dict(out) == attrs_dict(a), msg
    rc, msg, _ = core.parse(_replace(named, "num_frames", ("num_frames", INT32, 6)) + [("s4d_state", BYTES, blob)],
                            phase=1)
    assert rc == ERR_FIELD and "field(s) num_frames disagree with the serialised state 's4d_state'" in msg
    rc, msg, _ = core.parse([("s4d_state", BYTES, blob[:-3])], phase=1)
    assert rc == ERR_FIELD and "field 's4d_state': serialised BlockSparseAttention state is truncated" in msg
    rc, msg, _ = core.parse([("s4d_state", INT32, [1, 2])], phase=1)
    assert rc == ERR_FIELD and "must be opaque bytes (kUNKNOWN)" in msg
    rc, msg, _ = core.parse([], phase=1)
    assert rc == ERR_FIELD and "missing required field(s): num_frames" in msg and "(and no 's4d_state' field)" in msg


# ----------------------------------------------------------------------------------------------
# serialisation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {}, dict(num_frames=1, schedule=(1,), anchor=0), dict(num_frames=32, schedule=PRESETS["aggressive"], block_size=64,
                                                        tokens_per_frame=2048, head_dim=64, scale=0.125),
    dict(schedule=tuple(range(1, 65)), scale=-1e-30),
])
def test_serialisation_round_trip(core, overrides):
    a = make_attrs(**overrides)
    assert core.call("s4d_plugin_core_roundtrip", ctypes.byref(a)) == (OK, "")
    blob = core.serialize(a)
    magic, version, total = struct.unpack_from("<4sII", blob)
    assert (magic, version, total) == (b"S4DA", 1, len(blob))
    assert len(blob) == 12 + 24 + 8 + 4 * a.schedule_len + 24
    assert struct.unpack_from("<Q", blob, len(blob) - 8)[0] == fnv1a64(blob[:-8])
    # the recorded CSR fingerprint is FNV-1a over the little-endian offsets then indices
    offsets, indices = core.csr(a)
    rows, nnz, fingerprint = struct.unpack_from("<IIQ", blob, len(blob) - 24)
    assert (rows, nnz) == (offsets.size - 1, indices.size)
    assert fingerprint == fnv1a64(offsets.astype("<i4").tobytes() + indices.astype("<i4").tobytes())
    rc, msg, out = core.deserialize(blob)
    assert rc == OK, msg
    assert attrs_dict(out) == attrs_dict(a)
    assert struct.pack("<f", out.scale) == struct.pack("<f", a.scale)  # bit exact


def _rechecksum(blob: bytearray) -> bytes:
    struct.pack_into("<Q", blob, len(blob) - 8, fnv1a64(bytes(blob[:-8])))
    return bytes(blob)


def test_serialisation_detects_corruption(core):
    blob = core.serialize(make_attrs())
    cases = {
        "empty": (b"", "is truncated: 0 bytes, the header alone is 12"),
        "header only": (blob[:10], "is truncated: 10 bytes"),
        "truncated": (blob[:-1], f"is truncated: {len(blob) - 1} of {len(blob)} bytes"),
        "extended": (blob + b"\0", f"has {len(blob) + 1} bytes but its header says {len(blob)}"),
        "bad magic": (b"XXXX" + blob[4:], "bad magic tag"),
        "version 2": (blob[:4] + struct.pack("<I", 2) + blob[8:],
                      "has format version 2; this plugin reads version 1 (rebuild the engine"),
        "flipped byte": (blob[:20] + bytes([blob[20] ^ 1]) + blob[21:], "fails its checksum"),
    }
    bad = bytearray(blob)
    struct.pack_into("<i", bad, 32, 96)  # head_dim
    cases["invalid attribute"] = (_rechecksum(bad), "holds invalid attributes: head_dim 96 is not supported")
    bad = bytearray(blob)
    struct.pack_into("<Q", bad, len(bad) - 16, 12345)  # CSR fingerprint
    cases["mask drift"] = (_rechecksum(bad), "the mask rule changed between plugin versions; rebuild the engine")
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 40, 7)  # schedule length
    cases["schedule length"] = (_rechecksum(bad), "inconsistent schedule length (7)")
    for name, (data, message) in cases.items():
        rc, msg, _ = core.deserialize(data)
        assert rc == ERR_SERIAL and message in msg, (name, msg)


def test_serialize_buffer_too_small(core):
    a = make_attrs()
    size = ctypes.c_size_t()
    buf = ctypes.create_string_buffer(8)
    rc, msg = core.call("s4d_plugin_core_serialize", ctypes.byref(a), buf, 8, ctypes.byref(size))
    assert rc == ERR_BUFFER and size.value == len(core.serialize(a)) and "buffer too small" in msg


# ----------------------------------------------------------------------------------------------
# workspace, shapes, dtypes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames, blocks, schedule, anchor", [(1, 1, (1,), 1), (4, 4, (1, 1, 2, 4, 8, 16), 1),
                                                              (16, 32, (1, 1, 2, 4, 8, 16), 1), (7, 3, (4,), 0)])
def test_workspace_size_is_the_device_csr(core, frames, blocks, schedule, anchor):
    a = make_attrs(num_frames=frames, tokens_per_frame=blocks * 128, schedule=schedule, anchor=anchor)
    nnz = SparsePattern(frames, blocks, schedule, bool(anchor)).nnz()
    rows = frames * blocks
    vals = [ctypes.c_int64() for _ in range(4)]
    rc, msg = core.call("s4d_plugin_core_csr_device_layout", ctypes.byref(a), *map(ctypes.byref, vals))
    assert rc == OK, msg
    offsets_bytes, indices_offset, indices_bytes, total = (v.value for v in vals)
    align = lambda n: -(-n // 256) * 256  # noqa: E731
    assert offsets_bytes == 4 * (rows + 1) and indices_offset == align(offsets_bytes)
    assert indices_bytes == 4 * nnz and total == align(indices_offset + indices_bytes)
    assert core.call("s4d_plugin_core_workspace_size", ctypes.byref(a)) == (total, "")


def test_workspace_size_of_invalid_attributes(core):
    rc, msg = core.call("s4d_plugin_core_workspace_size", ctypes.byref(make_attrs(head_dim=80)))
    assert rc == -1 and "head_dim 80" in msg


def test_shape_rules(core):
    a = make_attrs()  # H=16, N=4*512=2048, D=128
    q = (2, 16, 2048, 128)
    assert core.check_shapes(a, [q, q, q]) == (OK, "")
    assert core.check_shapes(a, [(0, 16, 2048, 128)] * 3)[0] == OK  # empty batch
    assert core.check_shapes(a, [(-1, 16, 2048, 128)] * 3, wildcards=True)[0] == OK
    assert core.check_shapes(a, [(-1, 16, -1, 128)] * 3, wildcards=True)[0] == OK
    cases = [
        ([(-1, 16, 2048, 128)] * 3, "input 0 (q) dimension 0 (B) must be known and >= 0, got -1"),
        ([(2, 8, 2048, 128)] * 3, "input 0 (q) dimension 1 (H) is 8 but the plugin expects num_heads = 16"),
        ([(2, 16, 4096, 128)] * 3, "dimension 2 (N) is 4096 but the plugin expects num_frames (4) x "
                                   "tokens_per_frame (512) = 2048"),
        ([(2, 16, 2048, 64)] * 3, "dimension 3 (D) is 64 but the plugin expects head_dim = 128"),
        ([q, (3, 16, 2048, 128), q], "input 1 (k) dimension 0 (B) is 3 but q has 2"),
        ([q, q, (2, 16, 2048)], "input 2 (v) must be 4-D [B, H, N, D], got 3 dimensions"),
        ([q, q], "takes 3 inputs (q, k, v), got 2"),
        ([(2 ** 30, 16, 2048, 128)] * 3, "exceeds the CUDA kernel's launch-grid limit"),
    ]
    for shapes, message in cases:
        rc, msg = core.check_shapes(a, shapes)
        assert rc == ERR_SHAPE and message in msg, (shapes, msg)


@pytest.mark.parametrize("head_dim, block_size", [(16, 16), (32, 32), (128, 16), (16, 128), (64, 64)])
def test_shape_rules_at_every_kernel_size(core, head_dim, block_size):
    # small blocks once divided by zero in the launch-grid check (SIGFPE inside TensorRT's build)
    a = make_attrs(head_dim=head_dim, block_size=block_size, tokens_per_frame=4 * block_size, num_heads=4)
    q = (2, 4, 4 * 4 * block_size, head_dim)
    assert core.check_shapes(a, [q, q, q]) == (OK, "")
    big = (2 ** 31 // (4 * 16) + 1, 4, 4 * 4 * block_size, head_dim)  # B*H*query blocks > int32 max
    rc, msg = core.check_shapes(a, [big] * 3)
    assert rc == ERR_SHAPE and "x 16 query blocks exceeds the CUDA kernel's launch-grid limit" in msg, msg


def test_dtype_rules(core):
    assert core.call("s4d_plugin_core_check_dtype", DTYPE_F16) == (OK, "")
    assert core.call("s4d_plugin_core_check_dtype", DTYPE_BF16) == (OK, "")
    rc, msg = core.call("s4d_plugin_core_check_dtype", DTYPE_F32)
    assert rc == ERR_DTYPE and "float32 inputs are not supported" in msg and "--dtype fp16" in msg
    rc, msg = core.call("s4d_plugin_core_check_dtype", 5)
    assert rc == ERR_DTYPE and "unsupported dtype code 5" in msg


def test_describe(core):
    buf = ctypes.create_string_buffer(256)
    assert core.lib.s4d_plugin_core_describe(ctypes.byref(make_attrs(anchor=0)), buf, len(buf)) == OK
    assert buf.value.decode() == ("s4d::BlockSparseAttention(num_frames=4, tokens_per_frame=512, block_size=128, "
                                  "schedule=[1, 1, 2, 4, 8, 16], anchor=0, num_heads=16, head_dim=128, "
                                  "scale=0.0883883461)")


# ----------------------------------------------------------------------------------------------
# the plugin sources and the CMake project
# ----------------------------------------------------------------------------------------------


def test_cmake_configures_and_builds_the_core(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TensorRT_ROOT", "TENSORRT_ROOT", "TensorRT_RTX_ROOT", "TENSORRT_RTX_ROOT")}
    build = tmp_path / "build"
    proc = subprocess.run([cmake, "-S", str(PLUGIN_DIR), "-B", str(build)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    standard = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/local/tensorrt/include",
                "/opt/tensorrt/include")
    if not any((Path(d) / "NvInferRuntime.h").exists() for d in standard):
        assert SKIP_MESSAGE in proc.stdout, proc.stdout
        assert "s4d_trt_plugin enabled: OFF" in proc.stdout
    proc = subprocess.run([cmake, "--build", str(build), "--target", "s4d_plugin_core_c", "-j", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = Core(build / "libs4d_plugin_core_c.so")
    assert built.lib.s4d_plugin_core_abi_version() == 1
    assert built.validate(make_attrs()) == (OK, "")
