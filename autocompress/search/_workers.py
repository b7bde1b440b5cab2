"""The processes searching one run: registration on the ledger, liveness, ranks and seeds.

Trials record their owner (``worker`` user attribute); a ``RUNNING`` trial whose owner process is
gone (same host: the pid is dead or reused; other hosts: no heartbeat for ``STALE_AFTER_S``) is
*stale* and is finished at the next start from its final ``trials.jsonl`` line, or marked
``interrupted`` (and, for Optuna strategies, its parameters re-queued) when it has none. A
worker's rank makes its seeds differ from those of the processes running beside it
(``derive_seed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from autocompress.search.ledger import Ledger

    #: Where workers register: the run's ledger, or an Optuna study (the attribute names agree).
    _Registry = Ledger | optuna.Study

#: A worker on another host with no heartbeat for this long is taken to be gone.
STALE_AFTER_S = 1800.0
#: A RUNNING trial without an owner (killed between ask and tagging) is stale after this long.
OWNERLESS_AFTER_S = 60.0

_WORKER_PREFIX = "worker:"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a local process from /proc, None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return (rest[0], rest[19]) if len(rest) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """True when local process ``pid`` runs (not a zombie) and, if given, started at ``start``."""
    stat = _proc_stat(pid)
    if stat is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start is None
    state, started = stat
    if state in ("Z", "X"):
        return False
    return start is None or started == start


@dataclass(frozen=True)
class Worker:
    """One search process registered on a ledger (a ledger attribute ``worker:<uuid>``)."""

    uuid: str
    host: str
    pid: int
    start: str | None
    rank: int
    registered: float
    beat: float
    stopped: bool = False

    @property
    def key(self) -> str:
        """The ledger attribute key."""
        return _WORKER_PREFIX + self.uuid

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"uuid": self.uuid, "host": self.host, "pid": self.pid, "start": self.start,
                "rank": self.rank, "registered": self.registered, "beat": self.beat,
                "stopped": self.stopped}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Worker:
        """Inverse of ``to_dict``."""
        return cls(uuid=str(d["uuid"]), host=str(d["host"]), pid=int(d["pid"]),
                   start=d.get("start"), rank=int(d.get("rank", 0)),
                   registered=float(d.get("registered", 0.0)), beat=float(d.get("beat", 0.0)),
                   stopped=bool(d.get("stopped", False)))

    def alive(self, now: float | None = None) -> bool:
        """Whether the worker still runs (pid check on this host, heartbeat elsewhere)."""
        if self.stopped:
            return False
        if self.host == socket.gethostname():
            return process_alive(self.pid, self.start)
        return (now or time.time()) - self.beat < STALE_AFTER_S


def study_workers(study: _Registry) -> dict[str, Worker]:
    """Every worker ever registered on ``study`` (a ledger or an Optuna study), by uuid."""
    out = {}
    for k, v in study.user_attrs.items():
        if k.startswith(_WORKER_PREFIX) and isinstance(v, Mapping):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                w = Worker.from_dict(v)
                out[w.uuid] = w
    return out


def register_worker(study: _Registry) -> Worker:
    """Register this process on ``study`` with the smallest rank no live worker holds.

    The rank makes seeds distinct between concurrent processes (rank 0 keeps the spec's seed, so
    a resumed single-process search replays its original random stream). Registration is two
    steps, so that processes starting at the same moment agree: each first registers without a
    rank, then reads the live workers; ranks already chosen are taken, and workers still choosing
    that registered earlier (by time, then uuid) pick first, in that order.
    """
    stat = _proc_stat(os.getpid())
    now = time.time()
    me = Worker(uuid=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                start=stat[1] if stat else None, rank=-1, registered=now, beat=now)
    study.set_user_attr(me.key, me.to_dict())
    others = [w for w in study_workers(study).values() if w.uuid != me.uuid and w.alive()]
    taken = {w.rank for w in others if w.rank >= 0}
    choosing_first = sum(1 for w in others if w.rank < 0 and (w.registered, w.uuid) < (now, me.uuid))
    for _ in range(choosing_first):
        taken.add(next(r for r in range(len(taken) + 1) if r not in taken))
    rank = next(r for r in range(len(taken) + 1) if r not in taken)
    worker = Worker(**{**me.__dict__, "rank": rank})
    study.set_user_attr(worker.key, worker.to_dict())
    return worker


def heartbeat(study: _Registry, worker: Worker) -> Worker:
    """Refresh this worker's heartbeat on the study."""
    beat = Worker(**{**worker.__dict__, "beat": time.time()})
    study.set_user_attr(beat.key, beat.to_dict())
    return beat


def unregister_worker(study: _Registry, worker: Worker) -> None:
    """Mark this worker as stopped (its rank is free again; its trials are final)."""
    study.set_user_attr(worker.key, {**worker.to_dict(), "stopped": True, "beat": time.time()})


def derive_seed(seed: int, *parts: Any) -> int:
    """A seed derived from ``seed`` and ``parts`` (stable across runs and platforms)."""
    blob = json.dumps([int(seed), *[str(p) for p in parts]])
    return int(hashlib.sha256(blob.encode()).hexdigest()[:8], 16) % (2**31 - 1)


__all__ = [
    "OWNERLESS_AFTER_S",
    "STALE_AFTER_S",
    "Worker",
    "derive_seed",
    "heartbeat",
    "process_alive",
    "register_worker",
    "study_workers",
    "unregister_worker",
]
