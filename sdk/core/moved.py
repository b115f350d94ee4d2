"""Old module paths of ``sdk`` (the flat layout of 0.1), kept for one more release.

``import sdk.frames`` still works: it warns once (``DeprecationWarning``, pointing at the
importing line) and hands back the very module object of the new home, so monkeypatching or
``isinstance`` checks through either name agree. The table below is the one record of what moved
where; ``tests/test_structure.py`` checks every entry. It imports nothing of the SDK, so it sits
in ``core``, the bottom layer.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from typing import Any, Callable

REMOVED_IN = "0.2.0"  # the next release

# old module -> its new home
MOVED_MODULES = {
    "sdk.atomic": "sdk.core.atomic",
    "sdk.contract": "sdk.core.contract",
    "sdk.extras": "sdk.core.extras",
    "sdk.grid": "sdk.core.grid",
    "sdk.notices": "sdk.core.notices",
    "sdk.progress": "sdk.core.progress",
    "sdk.tensorfile": "sdk.core.tensorfile",
    "sdk.version": "sdk.core.version",
    "sdk.config": "sdk.models.config",
    "sdk.checkpoint": "sdk.models.checkpoint",
    "sdk.flops": "sdk.models.flops",
    "sdk.frames": "sdk.inputs.frames",
    "sdk.matting": "sdk.inputs.matting",
    "sdk.conditioning": "sdk.inputs.conditioning",
    "sdk.settings": "sdk.generation.settings",
    "sdk.sampling": "sdk.generation.sampling",
    "sdk.decode": "sdk.generation.decode",
    "sdk.mcubes": "sdk.generation.mcubes",
    "sdk.runtimes": "sdk.generation.runtimes",
    "sdk.pipeline": "sdk.generation.pipeline",
    "sdk.meshseq": "sdk.outputs.meshseq",
    "sdk.gltf": "sdk.outputs.gltf",
    "sdk.preview": "sdk.outputs.preview",
    "sdk.viewer": "sdk.outputs.viewer",
    "sdk.watchable": "sdk.outputs.watchable",
    "sdk.data.render": "sdk.outputs.render",
    "sdk.storage": "sdk.batch.storage",
    "sdk.distributed": "sdk.batch.distributed",
    "sdk.metrics": "sdk.evaluation.metrics",
}

# ``sdk.video`` re-exported three input modules (and the video writer, now an output); it is
# rebuilt from their names
MERGED_MODULES = {
    "sdk.video": {
        "sdk.inputs.frames": ["FrameSequence", "IMAGE_EXTENSIONS", "InputError", "MAX_FRAME_PIXELS",
                              "MAX_FRAME_PIXELS_ENV", "VIDEO_EXTENSIONS", "as_frame_list", "broken_link_reason",
                              "check_time_window", "load_frames", "max_frame_pixels", "natural_sort_key",
                              "sample_indices"],
        "sdk.inputs.matting": ["BORDER_KEY_THRESHOLD", "MATTING_METHODS", "REMBG_MODEL_FILE", "REMBG_MODEL_MD5",
                               "border_key_alpha", "rembg_model_path", "rembg_status", "remove_background"],
        "sdk.inputs.conditioning": ["PreparedSequence", "object_box", "prepare_sequence",
                                    "save_conditioning_images"],
        "sdk.outputs.video": ["write_video"],
    },
}

# names that left a module which itself stays: module -> {name: its new home}. ``sdk.batch`` was a
# module and is now the package of batch conversion, its names in ``sdk.batch.clips``; the video
# writer moved from the input side to the output side
_BATCH_NAMES = ("RAN_KEYS", "Item", "OutputOptions", "safe_output_name", "expand_inputs", "overlapping_input",
                "output_location", "plan_items", "ClipTimeout", "call_with_timeout", "convert_one", "report_line",
                "summarize")
MOVED_NAMES = {
    "sdk.batch": {name: "sdk.batch.clips" for name in _BATCH_NAMES},
    "sdk.inputs.frames": {"write_video": "sdk.outputs.video"},
}


def _import_machinery(filename: str) -> bool:
    return (filename.startswith("<frozen importlib") or filename == __file__
            or filename.replace("\\", "/").endswith("importlib/__init__.py"))


def _caller_stacklevel() -> int:
    """``stacklevel`` (as ``warn_moved`` passes it on) of the first frame outside the import
    machinery and this module, so that the warning names the user's ``import`` line. ``warnings``
    itself does not count importlib's ``_bootstrap`` frames, so neither does this."""
    frame, level = sys._getframe(1), 1  # level 1 = warn_moved itself
    while frame is not None and _import_machinery(frame.f_code.co_filename):
        frame = frame.f_back
        if frame is not None and not ("importlib" in frame.f_code.co_filename
                                      and "_bootstrap" in frame.f_code.co_filename):
            level += 1
    return level


def warn_moved(old: str, new: str, stacklevel: int | None = None) -> None:
    """One ``DeprecationWarning``: ``old`` moved to ``new``. Without ``stacklevel`` it points at the
    first frame outside the import machinery."""
    warnings.warn(f"{old} moved to {new}; the old name works until sculpt4d-sdk {REMOVED_IN}",
                  DeprecationWarning, stacklevel=stacklevel if stacklevel is not None else _caller_stacklevel())


class MovedModuleFinder:
    """Finds the old module names (after every real finder has said no) and loads the new home.
    A meta path finder and loader by protocol (``importlib.abc`` is not imported: it would pull
    ``importlib.resources`` and ``tempfile`` into every ``import sdk``)."""

    def find_spec(self, fullname, path=None, target=None):
        """A spec for an old module name, None for every other name."""
        if fullname in MOVED_MODULES or fullname in MERGED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        """None: the import system makes a plain module, which ``exec_module`` replaces."""
        return None  # a plain module; exec_module swaps in the new home

    def exec_module(self, module) -> None:
        """Warn, then put the new home in ``sys.modules`` under the old name (or fill a merged
        module with its names)."""
        old = module.__name__
        if old in MOVED_MODULES:
            new = MOVED_MODULES[old]
            warn_moved(old, new)
            # the import system returns whatever sys.modules holds under the old name afterwards
            sys.modules[old] = importlib.import_module(new)
            return
        parts = MERGED_MODULES[old]
        warn_moved(old, " and ".join(parts))
        for home, names in parts.items():
            source = importlib.import_module(home)
            for name in names:
                setattr(module, name, getattr(source, name))
        module.__all__ = sorted(name for names in parts.values() for name in names)
        module.__doc__ = f"Deprecated: the names of {', '.join(parts)} (kept until {REMOVED_IN})."


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (once): real modules always win."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


def forward_moved_names(module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module`` that hands out the names of ``MOVED_NAMES[module]``
    from their new homes, with one warning each (the name is then cached in ``module``)."""
    table = MOVED_NAMES[module]

    def __getattr__(name: str) -> Any:
        home = table.get(name)
        if home is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn_moved(f"{module}.{name}", f"{home}.{name}", stacklevel=3)
        value = getattr(importlib.import_module(home), name)
        setattr(sys.modules[module], name, value)
        return value

    return __getattr__
