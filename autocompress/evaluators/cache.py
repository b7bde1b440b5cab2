"""On-disk evaluation cache: identical (base model, code, data, policy, settings, fidelity) is never
scored twice.

What the key covers (docs/design.md, "What the evaluation cache key covers"): the base model's weights
and the code of every module class in it, the data's identity and a digest of the samples scored and
calibrated on, the compression space's settings, the policy, the evaluator settings, the fidelity, and
the source of the compression / evaluation code together with the versions of the libraries it runs on.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import sqlite3
import threading
import types
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from autocompress.evaluators.base import EvalResult

#: Packages whose classes are identified by name and installed version instead of by source: their
#: code only changes with the version, and reading their (large) sources would cost more than it tells.
_VERSIONED_PACKAGES: tuple[str, ...] = ("torch", "torchvision", "timm")

#: Libraries the compression and evaluation run on: a new version may change results.
_LOGIC_DISTRIBUTIONS: tuple[str, ...] = ("torch", "torch-pruning", "onnx", "onnxruntime", "numpy")

#: Subpackages of autocompress whose source decides what an evaluation returns.
_LOGIC_PACKAGES: tuple[str, ...] = ("compression", "evaluators")
#: Single modules an evaluation's numbers depend on too (``metrics``: FLOPs from MACs).
_LOGIC_MODULES: tuple[str, ...] = ("metrics.py",)


def _update_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of every ``state_dict`` tensor and non-persistent buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name, tensor in state.items():
        h.update(f"{name}|".encode())
        _update_tensor(h, tensor)
    for name, buf in model.named_buffers():
        if name not in state:
            h.update(f"buffer:{name}|".encode())
            _update_tensor(h, buf)
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's weights and of its code (``model_code_fingerprint``).

    Two models with the same code and weights share a fingerprint; retraining, loading another
    checkpoint or changing a ``forward`` changes it, so cached results never leak between base models.
    """
    h = hashlib.sha256(type(model).__qualname__.encode())
    h.update(weights_fingerprint(model).encode())
    h.update(model_code_fingerprint(model).encode())
    return h.hexdigest()


def _code_object_digest(code: types.CodeType, h: Any) -> None:
    # marshal is not deterministic (reference flags depend on refcounts): hash the parts instead.
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    h.update(repr(code.co_varnames).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_object_digest(const, h)
        else:
            h.update(_const_repr(const).encode())


def _const_repr(const: Any) -> str:
    # frozenset constants (``x in {"a", "b"}``) iterate in hash-seed order: sort them.
    if isinstance(const, frozenset):
        return "frozenset(" + ",".join(sorted(_const_repr(c) for c in const)) + ")"
    if isinstance(const, tuple):
        return "(" + ",".join(_const_repr(c) for c in const) + ")"
    return repr(const)


def _file_digest(path: str) -> str:
    # Not memoised: a file rewritten within the clock's resolution must still count as changed.
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _source_file_digest(obj: Any) -> str | None:
    """sha256 of the whole source file defining ``obj`` (helpers and constants next to it included)."""
    try:
        path = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
    if not path or not os.path.isfile(path):
        return None
    return _file_digest(path)


def _callable_identity(fn: Any) -> str:
    """The code of a function, method or ``functools.partial`` (hooks, instance-level overrides)."""
    if isinstance(fn, functools.partial):
        return "partial:" + _callable_identity(fn.func) + repr((fn.args, sorted(fn.keywords)))
    func = getattr(fn, "__func__", fn)
    code = getattr(func, "__code__", None)
    h = hashlib.sha256(getattr(func, "__qualname__", type(func).__qualname__).encode())
    if isinstance(code, types.CodeType):
        _code_object_digest(code, h)
        return "code:" + h.hexdigest()
    if isinstance(fn, nn.Module):
        return "module:" + _class_identity(type(fn))
    # NOTE: a builtin or C callable: its name is all there is to go by.
    return "name:" + h.hexdigest()


_PLAIN = (int, float, str, bytes, bool, type(None))


def _globals_digest(namespace: dict[str, Any], path: str, h: Any) -> None:
    """Functions compiled from ``path`` and plain constants of a module namespace, as loaded."""
    for name, value in sorted(namespace.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, types.FunctionType) and value.__code__.co_filename == path:
            h.update(f"|{name}:".encode())
            _code_object_digest(value.__code__, h)
        elif isinstance(value, _PLAIN) or (
            isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
        ):
            h.update(f"|{name}={_const_repr(value)}".encode())


def _functions_of(cls: type) -> list[tuple[str, Any]]:
    out = []
    for attr, value in sorted(vars(cls).items()):
        target = value.fget if isinstance(value, property) else value
        target = getattr(target, "__func__", target)  # staticmethod / classmethod
        if isinstance(target, types.FunctionType):
            out.append((attr, target))
    return out


def _class_identity(cls: type) -> str:
    """What identifies a class's code: its package version, or its source file and its functions.

    A class of ``torch`` / ``torchvision`` / ``timm`` is its name and the package version. Any other
    class is the digest of the file its functions were compiled from (so helpers and constants next
    to it count) plus the digest of the code objects of its own functions and of the functions and
    plain constants of its module as loaded (what really runs, even when the file was edited after
    import). Without a source file (notebook cell, ``exec``) only the
    code objects count; module-level helpers and class-level constants are then not covered.
    """
    top = cls.__module__.split(".", 1)[0]
    name = f"{cls.__module__}.{cls.__qualname__}"
    if top in _VERSIONED_PACKAGES:
        return f"{name}@{top}=={_dist_version(top)}"
    functions = _functions_of(cls)
    h = hashlib.sha256(name.encode())
    for attr, fn in functions:
        h.update(attr.encode())
        _code_object_digest(fn.__code__, h)
    # The file the functions were compiled from, else the one the module names; and the helpers
    # and constants the functions see as loaded (the file may have been edited since).
    files = {fn.__code__.co_filename for _, fn in functions}
    digest = None
    if len(files) == 1:
        (path,) = files
        if os.path.isfile(path):
            digest = _file_digest(path)
        _globals_digest(functions[0][1].__globals__, path, h)
    elif not files:
        digest = _source_file_digest(cls)
    return f"{name}#{digest or 'nosource'}#{h.hexdigest()}"


def class_fingerprint(cls: type) -> str:
    """sha256 of the code of ``cls`` and its bases up to ``object`` (see ``_class_identity``).

    Used for the evaluator's own class when it is a subclass: an overridden ``compress`` or
    ``score`` computes other results than the built-in evaluator under the same settings.
    """
    h = hashlib.sha256()
    for c in cls.__mro__:
        if c is not object:
            h.update(_class_identity(c).encode())
    return h.hexdigest()


@functools.cache
def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def model_code_fingerprint(model: nn.Module) -> str:
    """sha256 of the code that runs in ``model``'s forward: every module class, override and hook.

    Covers, for every submodule: its class and every base class up to ``nn.Module``
    (``_class_identity``), functions assigned on the instance (``m.forward = ...``), forward hooks
    and pre-hooks, and for TorchScript modules their compiled code. The same weights under a changed
    ``forward`` therefore get a new fingerprint.
    """
    h = hashlib.sha256()
    seen: dict[type, str] = {}
    for name, m in model.named_modules():
        h.update(f"{name}|".encode())
        if isinstance(m, torch.jit.ScriptModule):
            h.update(_script_code(m).encode())
            continue
        for cls in type(m).__mro__:
            if cls is object:
                continue
            if cls not in seen:
                seen[cls] = _class_identity(cls)
            h.update(seen[cls].encode())
        for attr, value in sorted(vars(m).items()):
            if not attr.startswith("_") and callable(value) and not isinstance(value, nn.Module):
                h.update(f"{attr}={_callable_identity(value)}".encode())
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for fn in hooks.values():
                h.update(_callable_identity(fn).encode())
    return h.hexdigest()


def _script_code(m: torch.jit.ScriptModule) -> str:
    try:
        return "script:" + str(m.code)
    except Exception:  # noqa: BLE001 - a module without a forward has no .code: its graph then
        try:
            return "graph:" + str(m.graph)
        except Exception:  # noqa: BLE001
            return "script:" + getattr(m, "original_name", type(m).__qualname__)


def tensors_fingerprint(tensors: Iterable[Tensor]) -> str:
    """sha256 over tensors (dtype, shape and bytes of each, in order): the samples an evaluation sees."""
    h = hashlib.sha256()
    for t in tensors:
        _update_tensor(h, t)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def logic_fingerprint() -> str:
    """sha256 of the compression and evaluation code and the library versions it runs on.

    Every ``.py`` file of ``autocompress.compression`` and ``autocompress.evaluators`` counts, so any
    change to how a candidate is compressed, recalibrated, fine-tuned, scored or timed makes results
    cached before it unreachable (computed once per process).
    """
    from autocompress import __version__

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(f"autocompress=={__version__}|EVALUATION_VERSION={EVALUATION_VERSION}".encode())
    for dist in _LOGIC_DISTRIBUTIONS:
        h.update(f"|{dist}=={_dist_version(dist)}".encode())
    for pkg in _LOGIC_PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(f"|{path.relative_to(root).as_posix()}|".encode())
            h.update(path.read_bytes())
    for name in _LOGIC_MODULES:
        h.update(f"|{name}|".encode())
        h.update((root / name).read_bytes())
    return h.hexdigest()


#: Bumped whenever what an evaluation computes changes for the same settings (a new step, a fixed
#: bug), so results cached by an earlier version are never served as current ones. (The source of
#: the compression and evaluation code counts too, through ``logic_fingerprint``.)
EVALUATION_VERSION = 3


def cache_key(model_fp: str, policy_key: str, config_key: str, fidelity: str, *, data_fp: str,
              space_fp: str) -> str:
    """The cache key of one evaluation: sha256 over its identifying parts and the code version.

    Args:
        model_fp: ``model_fingerprint`` of the base model (weights and code).
        policy_key: ``CompressionPolicy.key()``.
        config_key: ``EvaluatorConfig.key()``.
        fidelity: ``full`` or ``low``.
        data_fp: the data's identity and a digest of the samples used (``tensors_fingerprint``).
        space_fp: the compression space's settings (rounding, importance, knobs, example input).
    """
    blob = json.dumps([model_fp, policy_key, config_key, fidelity, data_fp, space_fp,
                       logic_fingerprint(), EVALUATION_VERSION])
    return hashlib.sha256(blob.encode()).hexdigest()


class EvalCache:
    """A SQLite table ``key -> EvalResult JSON`` in WAL mode, safe for concurrent processes.

    WAL lets readers run while one writer commits; writers from several processes serialise on
    SQLite's lock (``busy_timeout``), and ``INSERT OR REPLACE`` makes a duplicate write harmless.
    The cache pickles by path, so it can be shipped to worker processes.

    Example:
        >>> cache = EvalCache(tmp_path / "evals.sqlite")  # doctest: +SKIP
        >>> cache.put(key, result); cache.get(key).cached  # doctest: +SKIP
        True
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.hits = 0
        self.misses = 0
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._connect()

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross a fork: reconnect in a child process.
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path), timeout=self.timeout_s, check_same_thread=False, isolation_level=None
            )
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, key: str) -> EvalResult | None:
        """The stored result for ``key`` (marked ``cached=True``), or None."""
        with self._lock:
            row = self._connect().execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return EvalResult.from_dict(json.loads(row[0])).with_cached(True)

    def put(self, key: str, result: EvalResult) -> None:
        """Store ``result`` under ``key`` (the ``cached`` flag is stored as False)."""
        blob = json.dumps(result.with_cached(False).to_dict(), sort_keys=True)
        with self._lock:
            self._connect().execute(
                "INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", (key, blob)
            )

    def __contains__(self, key: str) -> bool:
        with self._lock:
            row = self._connect().execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        """Close this process's connection (it reopens on the next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], timeout_s=state["timeout_s"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"EvalCache({str(self.path)!r})"
