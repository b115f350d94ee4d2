"""The package structure: no import cycles among the ``sdk`` / ``export`` modules and no module
importing another's ``_private`` name. Read from the source (AST), so lazy imports inside
functions count too: a cycle hidden by a function-level import is still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sdk", "export")
# (importing module, imported module, name): private imports kept on purpose, each with why.
PRIVATE_ALLOWED: set[tuple[str, str, str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package __init__)."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: never run, so no import edge."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _imports(modules):
    """(edges: module -> modules it imports, private: [(module, source, name, line)])."""
    edges = {name: set() for name in modules}
    private = []
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):  # module level and inside functions alike
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:  # from package import submodule
                        edges[name].add(f"{source}.{alias.name}")
                    elif source in modules:
                        edges[name].add(source)
                        if alias.name.startswith("_") and not alias.name.startswith("__") and source != name:
                            private.append((name, source, alias.name, node.lineno))
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    edges, _ = _imports(_modules())
    assert _cycles(edges) == []


def test_cycle_finder_sees_lazy_imports():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    modules = _modules()
    edges, _ = _imports(modules)
    # sdk.mcubes imports the CUDA kernels inside a function; the edge must be there
    assert "sdk.kernels.cuda" in edges["sdk.mcubes"]


def test_no_cross_module_private_imports():
    _, private = _imports(_modules())
    found = {(m, s, n) for m, s, n, _ in private}
    assert found - PRIVATE_ALLOWED == set(), sorted(private)
    stale = PRIVATE_ALLOWED - found
    assert not stale, f"allow-list entries no longer needed: {sorted(stale)}"


# Public top-level names of modules that gave code away to new homes, as of f57910c (before the
# restructuring); each must still be importable from its old home.
PUBLIC_BEFORE = {
    "sdk.video": "BORDER_KEY_THRESHOLD FrameSequence IMAGE_EXTENSIONS InputError MATTING_METHODS MAX_FRAME_PIXELS "
                 "MAX_FRAME_PIXELS_ENV PreparedSequence REMBG_MODEL_FILE REMBG_MODEL_MD5 VIDEO_EXTENSIONS "
                 "border_key_alpha broken_link_reason check_time_window load_frames max_frame_pixels natural_sort_key "
                 "object_box prepare_sequence rembg_model_path rembg_status remove_background sample_indices "
                 "save_conditioning_images write_video",
    "sdk.runtimes": "BackendError ENGINE_FORMAT ENGINE_MANIFEST ENGINE_PARTS EXPORT_FORMAT EXPORT_MANIFEST OnnxQueryFn "
                    "OnnxRuntime TensorRTRuntime TorchRuntime check_engine_entry check_engine_manifest "
                    "engine_file_problem file_sha256 find_plugin_library gpu_description is_engine_directory "
                    "is_export_directory read_engine_manifest read_export_manifest",
    "sdk.kernels.cpu": "KernelBuildError block_sparse_attention_cpu build_log cache_dir cpp_ext_dir cpu_kernel_available "
                       "cpu_kernel_info cpu_kernel_unavailable_reason load_cpu_kernel native_dir",
    "sdk.kernels.cuda": "CUDA_SOURCES CudaKernelsUnavailable KERNEL_SIZES block_sparse_attention_cuda build_log "
                        "cuda_kernels_available cuda_kernels_unavailable_reason kernel_supports load_cuda_kernels "
                        "marching_cubes_cuda mcubes_backend",
    "sdk.pipeline": "DEFAULT_MODEL Generator RUN_DEFAULTS TINY_RANDOM default_model_path resolve_model_path",
    "sdk.mcubes": "BACKENDS Backend FieldLike WorldBox grid_to_world marching_cubes register_backend "
                  "resolve_backend_name",
    "export.builder": "BuildReport KEY_FIELDS MANIFEST PART_HASH PLUGIN_PRECISIONS PRECISIONS TARGETS build_engines "
                      "build_part_engine describe_engines engine_shapes plugin_decision plugin_stale_reason "
                      "read_manifest stale_reason target_description",
    "export.onnx": "DTYPES ExportError ExportResult FILES Fp32Norm MANIFEST OPSET TWO_GB VAEDecoderGraph VAEQueryGraph "
                   "attach_block_sparse_function block_sparse_function export_onnx exporter_fingerprint "
                   "half_precision_copy load_models read_attributes written_export",
    "sdk.meshseq": "ALL_FORMATS MANIFEST_VERSION MESH_FORMATS MeshSequence OutputExistsError SEQUENCE_FORMAT "
                   "SEQUENCE_FORMATS SEQUENCE_MANIFEST write_usd_sequence written_sequence",
}


@pytest.mark.parametrize("module", sorted(PUBLIC_BEFORE))
def test_old_homes_keep_every_public_name(module):
    import importlib

    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC_BEFORE[module].split() if not hasattr(mod, name)]
    assert missing == [], f"{module} lost {missing}"


def test_removed_name_says_where_it_went():
    import sdk.kernels.cuda as cuda

    with pytest.raises(AttributeError, match="register_mcubes_backend was removed: sdk.mcubes has the CUDA backend"):
        cuda.register_mcubes_backend  # noqa: B018


def test_no_private_names_reached_through_module_objects():
    """``import sdk.x as m`` / ``from . import x`` and then ``m._name`` is a private import too."""
    modules = _modules()
    found = []
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_package else name.split(".")[:-1]
                source = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                aliases.update({a.asname or a.name: f"{source}.{a.name}" for a in node.names
                                if f"{source}.{a.name}" in modules})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != name):
                found.append((name, aliases[node.value.id], node.attr, node.lineno))
    assert found == []


def test_scripts_use_public_names_only():
    """Benchmarks and examples are users of the package: no ``from sdk/export... import _name``."""
    found = []
    for path in sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "examples").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                found += [(path.name, node.module, a.name) for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []
