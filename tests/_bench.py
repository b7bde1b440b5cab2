"""Load a script of ``benchmarks/`` as a module (the directory is not a package), for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, *, fresh: bool = True) -> ModuleType:
    """``benchmarks/NAME.py`` as module ``NAME``: executed anew, or (``fresh=False``) the copy
    loaded before, if any."""
    if not fresh and name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses of the script look their module up by name
    spec.loader.exec_module(mod)
    return mod
