"""The package's layering (docs/design.md, "Layers"), checked on the source: a lower layer never
imports a higher one, in-function imports included, and the compression core stays free of the
search frameworks. The same rules are import-linter contracts in ``pyproject.toml``
(``[tool.importlinter]``); ``lint-imports`` runs here, and a test checks the two lists agree.

A new top-level module or subpackage fails here until it is given a place in ``LAYERS`` (and in the
design notes), so the layering cannot drift silently.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autocompress"

#: Rank of every top-level unit of the package (lower ranks never import higher ones).
LAYERS: dict[str, int] = {
    "errors": 0, "metrics": 0, "devices": 0, "registry": 0,
    "models": 1, "data": 1,
    "training": 2, "deploy": 2, "distill": 2,
    "compression": 3,
    "evaluators": 4, "rundir": 4,
    "problem": 5, "point_finetune": 5,
    "envs": 6, "policies": 6,
    "search": 7, "classic": 7,
    "report": 8, "train_cli": 8,
    "testing": 9,
    "cli": 10, "__init__": 10,
}

#: Known upward imports, each with where it is documented. Keep this list short (it is empty:
#: the end of a search fine-tunes through ``point_finetune``, below it).
EXCEPTIONS: dict[tuple[str, str], str] = {}

#: Third-party frameworks the compression core must not import (adapters import them lazily).
COMPRESSION_FORBIDDEN = ("optuna", "ray", "stable_baselines3")


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def _module(path: Path) -> list[str]:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved), with lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                out.append((name, node.lineno))
                if not node.module:  # from . import x: x may be a submodule
                    out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((node.module or "", node.lineno))
    return out


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_top_level_unit_has_a_layer() -> None:
    units = {_unit(p) for p in _sources()}
    missing = sorted(units - set(LAYERS))
    assert not missing, f"give these a layer in LAYERS and docs/design.md: {missing}"


def test_no_lower_layer_imports_a_higher_one() -> None:
    bad = []
    for path in _sources():
        src = _unit(path)
        for name, line in _imports(path):
            if not name.startswith("autocompress."):
                continue
            dst = name.split(".")[1]
            if dst == src or dst not in LAYERS or src not in LAYERS:
                continue
            if LAYERS[dst] > LAYERS[src] and (src, dst) not in EXCEPTIONS:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({src}) imports {name} ({dst})")
    assert not bad, "\n".join(bad)


def test_the_documented_exceptions_are_still_needed() -> None:
    """An exception nobody uses any more is removed from the list (and from the design notes)."""
    used = set()
    for path in _sources():
        src = _unit(path)
        for name, _ in _imports(path):
            if name.startswith("autocompress."):
                used.add((src, name.split(".")[1]))
    assert set(EXCEPTIONS) <= used, set(EXCEPTIONS) - used


def test_compression_core_does_not_import_search_frameworks() -> None:
    bad = []
    for path in (PACKAGE / "compression").rglob("*.py"):
        for name, line in _imports(path):
            if name.split(".")[0] in COMPRESSION_FORBIDDEN:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


#: What ``rundir`` may import at run time: it stays light enough for every reader and writer of a
#: run directory (``TYPE_CHECKING`` imports are for type checkers only and are not counted).
RUNDIR_ALLOWED = ("autocompress.errors", "autocompress.metrics", "autocompress.rundir")


def _runtime_imports(path: Path) -> list[tuple[str, int]]:
    """``_imports`` less those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hidden = {id(n) for node in ast.walk(tree)
              if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
              for stmt in node.body for n in ast.walk(stmt)}
    lines = {n.lineno for n in ast.walk(tree)
             if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in hidden}
    return [(name, line) for name, line in _imports(path) if line in lines]


def test_rundir_imports_only_the_standard_library_errors_and_metrics() -> None:
    bad = []
    for path in (PACKAGE / "rundir").rglob("*.py"):
        for name, line in _runtime_imports(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if not any(name == a or name.startswith(a + ".") for a in RUNDIR_ALLOWED):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_in_function_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an in-function absolute import and a relative import are both found."""
    pkg = tmp_path / "autocompress" / "compression"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text("def f():\n    import autocompress.search.runner\n    from ..report import run\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "autocompress"
    try:
        names = [n for n, _ in _imports(src)]
    finally:
        PACKAGE = saved
    assert "autocompress.search.runner" in names and "autocompress.report" in names


#: Modules a run-directory reader, a plug-in's spec or a tool needs without paying for torch: the
#: policy type, the knob registry (its transforms load torch when applied) and the search records.
LIGHT_MODULES = ("autocompress", "autocompress.errors", "autocompress.metrics", "autocompress.registry",
                 "autocompress.rundir", "autocompress.compression", "autocompress.search",
                 "autocompress.compression.policy", "autocompress.compression.knobs",
                 "autocompress.search.records")


def test_light_modules_import_without_torch_or_optuna() -> None:
    """The package's ``__init__`` files load their names on first use, so importing a light module
    does not import torch (about 1 s) or the search frameworks."""
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            f"for m in {LIGHT_MODULES!r}: importlib.import_module(m)\n"
            "heavy = sorted(h for h in ('torch', 'optuna', 'ray', 'numpy') if h in sys.modules)\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent, check=True).stdout.strip()
    assert out == "", f"importing {LIGHT_MODULES} loaded {out}"
    # ...and the names are still there on first use
    code = "import autocompress as a; from autocompress.compression import compress; print(a.CompressionSpace.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent, check=True).stdout.strip()
    assert out == "CompressionSpace"


def test_test_file_names_are_unique() -> None:
    """The test folders have no ``__init__.py``, so pytest imports each test file by its base name:
    two files of one name in different folders fail the whole run's collection."""
    from collections import Counter

    names = Counter(p.name for p in (PACKAGE.parent / "tests").rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []


# -- the import-linter contracts (pyproject.toml) ---------------------------------------------------
def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` of the venv running the tests, on the package under ``root``."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(exe), "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_import_linter_contracts_are_the_layers_above() -> None:
    """The layers contract ranks the units as ``LAYERS`` does, and its ignored imports, and the
    forbidden frameworks of compression, are the ones listed here."""
    layers = next(c for c in _contracts() if c["type"] == "layers")
    ranks = {}
    for rank, line in enumerate(reversed(layers["layers"])):
        for unit in line.split(":"):
            ranks[unit.strip()] = rank
    ours = {u: r for u, r in LAYERS.items() if u != "__init__"}  # the container itself
    assert ranks.keys() == ours.keys()
    assert all((ranks[a] < ranks[b]) == (ours[a] < ours[b]) for a in ours for b in ours)
    ignored = {tuple(x.split(".")[1] for x in i.split(" -> ")) for i in layers.get("ignore_imports", [])}
    assert ignored == set(EXCEPTIONS)
    forbidden = next(c for c in _contracts() if c.get("source_modules") == ["autocompress.compression"])
    assert tuple(forbidden["forbidden_modules"]) == COMPRESSION_FORBIDDEN


@pytest.mark.timeout(300)
def test_lint_imports_keeps_every_contract() -> None:
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in proc.stdout


@pytest.mark.timeout(300)
def test_lint_imports_sees_an_in_function_upward_import(tmp_path: Path) -> None:
    """On a copy of the package with one in-function import of search inside compression, the
    layers contract breaks and names it."""
    shutil.copytree(PACKAGE, tmp_path / "autocompress", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "autocompress" / "compression" / "_probe.py").write_text(
        "def f():\n    import autocompress.search.runner\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "autocompress.compression._probe -> autocompress.search.runner" in proc.stdout, proc.stdout
