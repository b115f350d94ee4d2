"""The documentation: the README is a front page with the two set-up commands, and the MkDocs
site builds with ``--strict`` (broken links or anchors, and public names without a docstring,
fail it; see ``docs/hooks/docstrings.py``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_is_a_front_page_with_the_two_commands():
    assert len(README.splitlines()) <= 200
    commands = [line for block in _bash_blocks(README) for line in block.splitlines()
                if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2, commands
    main, tests = commands
    assert "s4d-convert" in main and "pip install torch==2.13.0 -e ." in main
    assert tests.endswith("python -m pytest -q")
    # CI calls the README's test command: the same install and the same runner
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests.split("pip install ", 1)[1] in ci, "the README test command and .ci/run disagree"
    for page in ("index.md", "install.md"):  # the docs repeat both commands; they must not drift
        text = (ROOT / "docs" / page).read_text()
        assert main in text and tests in text, f"docs/{page} lost or changed a set-up command"


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    missing = [p for p in pages if f": {p}" not in nav]
    assert missing == [], f"docs pages not in mkdocs.yml's nav: {missing}"


def test_mkdocs_build_strict(tmp_path):
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            raise AssertionError("CI installs the [docs] extra; mkdocs is missing") from exc
        pytest.skip(f"the [docs] extra is not installed ({exc}); pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    api = (site / "api" / "generation" / "index.html").read_text()
    assert "sdk.generation.pipeline.Generator" in api  # the reference is really generated from the code


def test_docstring_hook_fails_on_a_missing_docstring(tmp_path, monkeypatch):
    """The hook the strict build relies on: a public function without a docstring is a warning."""
    pytest.importorskip("griffe")
    import importlib.util
    import logging

    spec = importlib.util.spec_from_file_location("docstrings_hook", ROOT / "docs" / "hooks" / "docstrings.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A toy package."""\n')
    (pkg / "mod.py").write_text('"""A module."""\n\ndef documented():\n    """Yes."""\n\n\n'
                                'def bare():\n    pass\n\n\ndef _private():\n    pass\n')
    import griffe

    hook._loaded["toypkg"] = griffe.load("toypkg", search_paths=[str(tmp_path)])

    class Page:
        class file:
            src_uri = "api/toy.md"

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hook.log.addHandler(handler)
    try:
        hook.on_page_markdown("# Toy\n\n::: toypkg.mod\n", Page)
    finally:
        hook.log.removeHandler(handler)
    messages = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert messages == ["api/toy.md: public name toypkg.mod.bare has no docstring"]
