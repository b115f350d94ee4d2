"""MkDocs hook: every public name that the API reference documents must have a docstring.

For each ``::: module`` line of a page under ``api/``, the module is loaded with griffe (the same
static loader mkdocstrings uses; nothing is imported or run) and every public function, class and
method or property of a public class without a docstring is logged as a warning, which
``mkdocs build --strict`` turns into a failed build. Public is griffe's rule: listed in
``__all__`` when the module has one, else not ``_private`` and defined (not imported) there.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.docstrings")

_DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.M)
_loaded: dict = {}


def _load(path: str):
    import griffe

    package = path.split(".")[0]
    if package not in _loaded:
        root = Path(__file__).resolve().parents[2]
        _loaded[package] = griffe.load(package, search_paths=[str(root)], resolve_aliases=True,
                                       resolve_implicit=True, resolve_external=False)
    obj = _loaded[package]
    for part in path.split(".")[1:]:
        obj = obj.members[part]
    return obj


def _missing(obj, prefix: str = "") -> list[str]:
    out = []
    for name, member in obj.members.items():
        if not member.is_public or (name.startswith("__") and name != "__call__"):
            continue  # dunders: the class docstring (with __init__ merged in) covers them
        target = member.final_target if member.is_alias else member
        is_property = target.kind.value == "attribute" and "property" in target.labels
        if target.kind.value not in ("function", "class") and not is_property:
            continue
        if member.is_alias and obj.kind.value == "class":
            continue  # inherited / assigned from elsewhere: documented at home
        if not (target.docstring and target.docstring.value.strip()):
            out.append(f"{prefix}{name}")
        if target.kind.value == "class" and not member.is_alias:
            out += _missing(target, f"{prefix}{name}.")
    return out


def on_page_markdown(markdown: str, page, **_):
    if not page.file.src_uri.startswith("api/"):
        return markdown
    for path in _DIRECTIVE.findall(markdown):
        obj = _load(path)
        if obj.is_module and not (obj.docstring and obj.docstring.value.strip()):
            log.warning("%s: module %s has no docstring", page.file.src_uri, path)
        for name in _missing(obj):
            log.warning("%s: public name %s.%s has no docstring", page.file.src_uri, path, name)
    return markdown
