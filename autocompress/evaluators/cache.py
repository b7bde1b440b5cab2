"""On-disk evaluation cache: identical (base model, policy, settings, fidelity) is never scored twice."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.evaluators.base import EvalResult


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's class name and every ``state_dict`` tensor (name, dtype, shape, bytes).

    Two models with the same architecture and weights share a fingerprint; retraining or loading
    another checkpoint changes it, so cached results never leak between base models.
    """
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


#: Bumped whenever what an evaluation computes changes for the same settings (a new step, a fixed
#: bug), so results cached by an earlier version are never served as current ones.
EVALUATION_VERSION = 2


def cache_key(model_fp: str, policy_key: str, config_key: str, fidelity: str) -> str:
    """The cache key of one evaluation: sha256 over its identifying parts and the code version."""
    from autocompress import __version__

    blob = json.dumps([model_fp, policy_key, config_key, fidelity, __version__, EVALUATION_VERSION])
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
