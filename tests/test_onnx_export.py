"""ONNX export: ORT parity with PyTorch, the BlockSparseAttention node and its function body,
the ONNX Runtime backend of Generator, clear export errors, and a TensorRT-RTX build."""

import json
import re

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the [onnx] extra (onnx, onnxruntime) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra (onnx, onnxruntime) is not installed")

from export.onnx import ExportError, block_sparse_function, export_onnx, read_attributes  # noqa: E402
from sdk.core.contract import EXPORT_FIELDS  # noqa: E402
from sdk.generation.pipeline import Generator  # noqa: E402
from sdk.sparse import PRESETS, SparsePattern, reference_block_sparse_attention  # noqa: E402
from sdk.sparse.attention import ONNX_DOMAIN, ONNX_OP, onnx_node_attributes  # noqa: E402

FRAMES = 3
# fp16 graphs on ONNX Runtime's CPU provider: fp16 storage and fp16 matmul outputs; measured
# ~2.5e-2 max error relative to the output's max magnitude on the tiny random model.
FP16_REL_TOL = 6e-2


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {dtype: export_onnx("tiny", root / dtype, frames=FRAMES, dtype=dtype) for dtype in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def tiny():
    return Generator.tiny_random(seed=0)


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def rel_err(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def dit_inputs(gen, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = gen.dit.config
    return (torch.randn(B, FRAMES, cfg.input_size, cfg.in_channels, generator=g), torch.rand(B, generator=g),
            torch.randn(B, FRAMES, 17, cfg.context_dim, generator=g))


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("batch", [1, 2])
def test_dit_parity(exports, tiny, dtype, batch):
    x, t, c = dit_inputs(tiny, batch, seed=batch)
    with torch.no_grad():
        ref = tiny.dit(x, t, c).numpy()
    npdt = np.float32 if dtype == "fp32" else np.float16
    out = session(exports[dtype].files["dit"]).run(None, {"latents": x.numpy().astype(npdt),
                                                          "t": t.numpy().astype(npdt),
                                                          "context": c.numpy().astype(npdt)})[0]
    assert out.dtype == npdt
    assert rel_err(out, ref) <= (1e-4 if dtype == "fp32" else FP16_REL_TOL)


def test_vae_and_conditioner_parity(exports, tiny):
    g = torch.Generator().manual_seed(4)
    vcfg = tiny.vae.config
    latents = torch.randn(1, vcfg.num_latents, vcfg.embed_dim, generator=g)
    xyz = torch.rand(1, 777, 3, generator=g) * 2 - 1
    with torch.no_grad():
        field_ref = tiny.vae.query(tiny.vae.decode(latents), xyz).numpy()
    files = exports["fp32"].files
    key, value = session(files["vae_decoder"]).run(None, {"latents": latents.numpy()})
    field = session(files["vae_query"]).run(None, {"key": key, "value": value, "xyz": xyz.numpy()})[0]
    assert rel_err(field, field_ref) <= 1e-4
    size = tiny.conditioner.config.image_size
    images = torch.randn(2, 3, size, size, generator=g)
    with torch.no_grad():
        tokens_ref = tiny.conditioner(images).numpy()
    tokens = session(files["conditioner"]).run(None, {"images": images.numpy()})[0]
    assert rel_err(tokens, tokens_ref) <= 1e-4


def test_node_carries_exactly_the_plugin_attributes(exports, tiny):
    model = onnx.load(str(exports["fp32"].files["dit"]))
    nodes = [n for n in model.graph.node if n.domain == ONNX_DOMAIN and n.op_type == ONNX_OP]
    assert len(nodes) == tiny.dit.config.depth, "one BlockSparseAttention node per block"
    cfg = tiny.dit.config
    pattern = SparsePattern.for_tokens(FRAMES, cfg.input_size, cfg.temporal.block_size)
    expected = onnx_node_attributes(pattern, cfg.temporal.block_size, cfg.num_heads, cfg.head_dim,
                                    cfg.head_dim ** -0.5)
    for node in nodes:
        assert_same_attributes(read_attributes(node), expected)
    functions = [f for f in model.functions if (f.domain, f.name) == (ONNX_DOMAIN, ONNX_OP)]
    assert len(functions) == 1
    assert {n.op_type for n in functions[0].node} <= {"Constant", "Reshape", "Gather", "Transpose", "MatMul", "Cast",
                                                      "Mul", "Add", "Softmax", "CastLike"}
    manifest = json.loads((exports["fp32"].directory / "export.json").read_text())
    assert manifest["frames"] == FRAMES
    assert_same_attributes(manifest["block_sparse_node"], expected)


def assert_same_attributes(got, expected):
    """Same names and values; floats compared at float32 precision (ONNX stores float32)."""
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-7), name
        else:
            assert got[name] == value, name


def single_node_model(attrs, dtype):
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    B, H, N, D = 2, attrs["num_heads"], attrs["num_frames"] * attrs["tokens_per_frame"], attrs["head_dim"]
    inputs = [helper.make_tensor_value_info(n, elem, [B, H, N, D]) for n in "qkv"]
    node = helper.make_node(ONNX_OP, ["q", "k", "v"], ["out"], domain=ONNX_DOMAIN, **attrs)
    graph = helper.make_graph([node], "bsa", inputs, [helper.make_tensor_value_info("out", elem, [B, H, N, D])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(ONNX_DOMAIN, 1)],
                              functions=[block_sparse_function(attrs)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_function_body_equals_reference(name, anchor, dtype):
    T, P, bs, H, D = 5, 32, 16, 2, 16
    pattern = SparsePattern.for_tokens(T, P, bs, PRESETS[name], anchor)
    attrs = onnx_node_attributes(pattern, bs, H, D, 0.3)
    sess = ort.InferenceSession(single_node_model(attrs, dtype).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(hash((name, anchor)) % 1000)
    q, k, v = (torch.randn(2, H, T * P, D, generator=g) for _ in range(3))
    q, k, v = (x.to(torch.float16).float() for x in (q, k, v)) if dtype == np.float16 else (q, k, v)
    out = sess.run(None, {"q": q.numpy().astype(dtype), "k": k.numpy().astype(dtype), "v": v.numpy().astype(dtype)})[0]
    ref = reference_block_sparse_attention(q, k, v, pattern, bs, scale=0.3).numpy()
    np.testing.assert_allclose(out.astype(np.float32), ref, atol=1e-5 if dtype == np.float32 else 5e-3, rtol=1e-3)


def test_onnxruntime_backend_matches_torch(exports, tiny, tmp_path):
    from conftest import write_clip as write_video

    video = write_video(tmp_path / "clip.mp4")
    ort_gen = Generator.from_pretrained(exports["fp32"].directory)
    assert ort_gen.backend == "onnxruntime"
    # the model's own meshes: tracking (topology="consistent") is iterative, and input differences
    # at float precision can settle it a little differently; the tracker has its own tests
    kwargs = dict(num_frames=FRAMES, steps=3, resolution=24, seed=5, topology="per-frame", exact=True)
    a, b = tiny(video, **kwargs), ort_gen(video, **kwargs)
    for ma, mb in zip(a.meshes, b.meshes):
        assert len(ma.vertices) == len(mb.vertices)
        np.testing.assert_allclose(ma.vertices, mb.vertices, atol=1e-4)
    with pytest.raises(ValueError, match=f"built for {FRAMES} frames"):
        ort_gen(video, num_frames=FRAMES + 1, steps=2, resolution=16)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(frames=0), "positive integer"),
    (dict(frames=2, schedule="wobbly"), "unknown schedule"),
    (dict(frames=2, block_size=24), "multiple of the block size"),
    (dict(frames=2, dtype="int8"), "--dtype"),
])
def test_export_errors(tmp_path, kwargs, needle):
    with pytest.raises(ExportError, match=needle):
        export_onnx("tiny", tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_tensorrt_rtx_builds_the_exported_graphs(exports):
    """TensorRT-RTX (CPU-only ahead-of-time build) parses and builds every exported graph; the
    BlockSparseAttention function body stands in, since no plugin is registered here."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'sculpt4d-sdk[trt-rtx]')")
    from export.tensorrt import ShapeRange, build_engine

    for dtype, result in exports.items():
        for part, path in result.files.items():
            shapes = {"xyz": ShapeRange((1, 1, 3), (1, 4096, 3), (1, 65536, 3))} if part == "vae_query" else None
            engine = build_engine(path, shapes, flavour="tensorrt-rtx", use_plugin=False)
            assert len(engine.data) > 1000 and engine.plugin_layers == 0, (dtype, part)


def test_export_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an ONNX export directory"):
        export_onnx("tiny", tmp_path, frames=2, parts=("vae_query",))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_export_leaves_the_callers_model_unchanged(tiny, tmp_path):
    before = (tiny.dit.config, [m.impl for m in tiny.dit.modules() if hasattr(m, "experts")])
    export_onnx((tiny.dit, tiny.vae, tiny.conditioner, {"name": "t", "dit_hash": "x"}), tmp_path / "e", frames=2,
                schedule="fixed4", parts=("dit",))
    assert (tiny.dit.config, [m.impl for m in tiny.dit.modules() if hasattr(m, "experts")]) == before
    assert tiny.dit.blocks[0].temporal_attn.temporal.schedule == (1, 1, 2, 4, 8, 16)


# ---- the large-model path at a small size: external data, shared fp16 weights -----------------


def test_external_data_export_runs_and_builds(exports, tiny, tmp_path):
    """The >2 GB code path forced on for the tiny model: weights in dit.onnx.data, the same
    outputs as the single-file export, and TensorRT-RTX builds from it (both parser entry points)."""
    result = export_onnx("tiny", tmp_path / "ext", frames=FRAMES, dtype="fp16", parts=("dit",), external_data=True)
    path = result.files["dit"]
    data_files = [p for p in path.parent.iterdir() if p.suffix == ".data"]
    assert len(data_files) == 1 and data_files[0].stat().st_size > path.stat().st_size
    assert data_files[0].name in json.loads((path.parent / "export.json").read_text())["written"]
    proto = onnx.load(str(path), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    x, t, c = dit_inputs(tiny, 2, seed=7)
    feed = {"latents": x.numpy().astype(np.float16), "t": t.numpy().astype(np.float16),
            "context": c.numpy().astype(np.float16)}
    ext = session(path).run(None, feed)[0]
    single = session(exports["fp16"].files["dit"]).run(None, feed)[0]
    np.testing.assert_array_equal(ext, single)
    if __import__("importlib").util.find_spec("tensorrt_rtx") is not None:
        from export.tensorrt import build_engine

        for use_plugin in (False, True):  # parse(bytes, path) and parse_from_file resolve the .data file
            assert len(build_engine(path, flavour="tensorrt-rtx", use_plugin=use_plugin).data) > 1000


def test_fp16_checkpoint_exports_without_copying_the_dit(tmp_path):
    from export.onnx import half_precision_copy, load_models

    from typer.testing import CliRunner

    from export.cli import app

    ckpt = tmp_path / "ckpt"
    made = CliRunner().invoke(app, ["random-checkpoint", "-o", str(ckpt), "--size", "tiny", "--seed", "3"])
    assert made.exit_code == 0 and "random weights, seed 3" in made.output, made.output
    again = CliRunner().invoke(app, ["random-checkpoint", "-o", str(ckpt), "--size", "tiny"])
    assert again.exit_code == 2 and "writes a new directory only" in again.output  # never replaced
    from sdk.models.checkpoint import load_checkpoint, state_dict_hash

    recorded = json.loads((ckpt / "sculpt4d.json").read_text())["hashes"]
    loaded = load_checkpoint(ckpt)  # the streamed hash is the content hash of what was written
    assert recorded == {part: state_dict_hash(getattr(loaded, part)) for part in ("dit", "vae", "conditioner")}
    dit, _, _, info = load_models(ckpt, torch.float16)
    weight = dit.blocks[0].attn1.to_q.weight
    assert weight.dtype == torch.float16
    mapped = __import__("sdk.core.tensorfile", fromlist=["map_safetensors"]).map_safetensors(ckpt / "dit.safetensors")
    assert torch.equal(weight, mapped["blocks.0.attn1.to_q.weight"])
    clone = half_precision_copy(dit, torch.float16)
    assert clone.blocks[0].attn1.to_q.weight.data_ptr() == weight.data_ptr()  # shared, not copied
    norm = clone.blocks[0].norm1.norm  # norms are copied to fp32; the caller's stay fp16
    assert norm.weight.dtype == torch.float32 and dit.blocks[0].norm1.weight.dtype == torch.float16
    fp32_dit = load_models(ckpt)[0]  # an fp32 export converts (copies) as before
    assert fp32_dit.blocks[0].attn1.to_q.weight.dtype == torch.float32


@pytest.mark.slow
def test_a_dit_over_2gb_exports_with_external_data_and_builds_with_the_plugin(tmp_path):
    """benchmarks/full_export.py at a size whose DiT crosses protobuf's 2 GB limit (1.1B params,
    2.2 GB in fp16): random checkpoint -> ONNX with external data -> TensorRT-RTX engine whose 7
    blocks are plugin layers. About 5 minutes and ~10 GB of RAM on 2 cores."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("tensorrt_rtx")
    from sdk.generation.runtimes import find_plugin_library

    if find_plugin_library() is None:
        pytest.skip("set S4D_TRT_PLUGIN to a built libs4d_trt_plugin.so (plugins_trt/README.md)")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "full_export.py"
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(script), "--size", "w2048-d7", "--steps", "checkpoint,onnx,engine",
                           "--parts", "dit", "--work-dir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["step"]: r for r in json.loads(out.read_text())["sizes"]["w2048-d7"]}
    assert all(r["exit"] == 0 for r in rows.values()), rows
    assert rows["onnx:dit"]["external_data"] and rows["onnx:dit"]["bytes"] > 2 * 1024 ** 3
    assert rows["engine:dit"]["plugin_layers"] == 7


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("dit_config"), "'dit_config' must be dict, got None"),
    (lambda m: m.update(frames="4"), "'frames' must be int, got '4'"),
    (lambda m: m["files"].update(extra="x.onnx"), "unknown part(s) ['extra'] in 'files'"),
])
def test_malformed_export_manifest_is_refused_with_the_field(exports, tmp_path, change, message):
    """What the runtimes read from export.json is checked in one place (sdk.core.contract), so a
    hand-edited or truncated manifest is a clear error, not a KeyError from deep inside."""
    import shutil

    from sdk.generation.pipeline import GeneratorError

    copy = tmp_path / "export"
    shutil.copytree(exports["fp32"].directory, copy)
    manifest = json.loads((copy / "export.json").read_text())
    assert set(manifest) >= set(EXPORT_FIELDS)  # the exporter writes what the runtimes read
    change(manifest)
    (copy / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(GeneratorError, match=re.escape(message)):
        Generator.from_pretrained(copy)
