"""A ledger without Optuna: one append-only JSON-lines file in the run directory.

Every change is one line (``create``, study ``attr``, ``ask``, trial ``set``, ``finish``,
``delete``), each tagged with its study's name, appended under an exclusive ``flock`` after the
writer has read every line before it; so trial numbers are dense and unique across the processes
sharing the file, as in Optuna's journal. A reader applies the complete lines it has not seen
yet (a line without its newline is still being written, or was torn by a kill: the next writer,
holding the lock, cuts it off before appending).

The ledger of a new run whose strategy proposes on its own (``ladder``, the default, ``uniform``,
``random``, ``greedy``, the RL agents) and that names no ``--storage``; strategies that sample from
an Optuna study (``nsga2``, ``tpe``) and runs given ``--storage`` keep ``OptunaLedger`` (see
``resume.ledger_kind``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from autocompress.rundir import jsonable
from autocompress.search.ledger import Ledger, LedgerTrial, TrialHandle

#: Version of the line format (in each ``create`` line).
FILE_LEDGER_VERSION = 1


class _FileTrial:
    """An open trial of a :class:`FileLedger` (writes go straight to the file)."""

    def __init__(self, ledger: FileLedger, number: int) -> None:
        self._ledger = ledger
        self._number = number

    @property
    def number(self) -> int:
        return self._number

    @property
    def user_attrs(self) -> dict[str, Any]:
        self._ledger._catch_up()  # noqa: SLF001 - the ledger's own handle
        return dict(self._ledger._trials[self._number]["attrs"])  # noqa: SLF001

    def set_user_attr(self, key: str, value: Any) -> None:
        self._ledger._write({"op": "set", "n": self._number, "key": key, "value": value})  # noqa: SLF001


class FileLedger(Ledger):
    """The trials of study ``study_name`` in the JSON-lines file ``path``.

    Args:
        path: the file (created on first write).
        study_name: the study this object reads and writes (a file may hold several).
        where: how errors and ``pareto.json`` name it (default: ``ledger:PATH``).
    """

    def __init__(self, path: str | os.PathLike[str], study_name: str, where: str | None = None
                 ) -> None:
        self.path = Path(path)
        self.study_name = study_name
        self.where = where or f"ledger:{self.path}"
        self._offset = 0
        self._exists = False
        self._directions: list[str] = []
        self._attrs: dict[str, Any] = {}
        self._trials: list[dict[str, Any]] = []

    @classmethod
    def open(cls, path: str | os.PathLike[str], study_name: str, directions: Sequence[str],
             where: str | None = None) -> FileLedger:
        """Open study ``study_name`` in ``path``, creating it with ``directions`` if absent."""
        ledger = cls(path, study_name, where)
        ledger._write({"op": "create", "v": FILE_LEDGER_VERSION, "directions": list(directions)},
                      only_if_absent=True)
        return ledger

    # -- the file -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _read_new(self, fd: int | None = None) -> bytes:
        """The complete lines after ``_offset`` (the unterminated tail, if any, is left)."""
        if fd is None:
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(self._offset)
                    data = fh.read()
            except FileNotFoundError:
                return b""
        else:
            size = os.fstat(fd).st_size
            data = os.pread(fd, max(0, size - self._offset), self._offset)
        end = data.rfind(b"\n")
        return data[:end + 1] if end >= 0 else b""

    def _catch_up(self, fd: int | None = None) -> None:
        data = self._read_new(fd)
        if not data:
            return
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # not a line this ledger wrote; skipped like a torn one
            if isinstance(rec, dict) and rec.get("study") == self.study_name:
                self._apply(rec)
        self._offset += len(data)

    def _apply(self, rec: Mapping[str, Any]) -> None:
        op = rec.get("op")
        if op == "create" and not self._exists:
            self._exists = True
            self._directions = [str(d) for d in rec.get("directions", [])]
        elif op == "delete":
            self._exists = False
            self._directions, self._attrs, self._trials = [], {}, []
        elif op == "attr":
            self._attrs = {**self._attrs, str(rec["key"]): rec.get("value")}
        elif op == "ask":
            self._trials.append({"number": len(self._trials), "running": True, "attrs": {},
                                 "started": rec.get("time"), "values": None})
        elif op == "set":
            t = self._trials[int(rec["n"])]
            t["attrs"] = {**t["attrs"], str(rec["key"]): rec.get("value")}  # snapshots stay as taken
        elif op == "finish":
            t = self._trials[int(rec["n"])]
            t.update(running=False, values=rec.get("values"), constraints=rec.get("constraints"))

    def _write(self, rec: dict[str, Any], *, only_if_absent: bool = False) -> int:
        """Append ``rec`` after every line before it; returns the new trial's number for ``ask``."""
        with self._locked() as fd:
            size = os.fstat(fd).st_size
            if size:
                os.lseek(fd, max(0, size - 1), os.SEEK_SET)
                if os.read(fd, 1) != b"\n":  # a writer killed mid-line: cut it off (we hold the lock)
                    tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
                    cut = tail.rfind(b"\n")
                    os.ftruncate(fd, size - len(tail) + cut + 1 if cut >= 0 else 0)
            self._catch_up(fd)
            if only_if_absent and self._exists:
                return -1
            number = len(self._trials)
            if rec["op"] == "ask":
                rec = {**rec, "n": number}
            elif rec["op"] == "finish" and not self._trials[rec["n"]]["running"]:
                raise RuntimeError(f"trial {rec['n']} of study {self.study_name!r} is finished already")
            line = json.dumps(jsonable({**rec, "study": self.study_name}), sort_keys=True,
                              allow_nan=False) + "\n"
            end = os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, line.encode())
            os.fsync(fd)
            if end == self._offset:  # nothing between what we read and our line
                self._apply({**rec, "study": self.study_name})
                self._offset += len(line.encode())
            return number

    # -- Ledger -------------------------------------------------------------------------------
    @property
    def directions(self) -> list[str]:
        self._catch_up()
        return list(self._directions)

    @property
    def user_attrs(self) -> dict[str, Any]:
        self._catch_up()
        return dict(self._attrs)

    def set_user_attr(self, key: str, value: Any) -> None:
        self._write({"op": "attr", "key": key, "value": value})

    def ask(self) -> TrialHandle:
        return _FileTrial(self, self._write({"op": "ask", "time": time.time()}))

    def finish(self, trial: TrialHandle, values: Sequence[float] | None,
               constraints: Mapping[str, float] | None = None) -> None:
        self._write({"op": "finish", "n": int(trial.number),
                     "values": None if values is None else [float(v) for v in values],
                     "constraints": dict(constraints) if constraints else None})

    def trials(self, *, running: bool = False) -> list[LedgerTrial]:
        self._catch_up()
        return [LedgerTrial(number=t["number"], running=t["running"], user_attrs=t["attrs"],
                            started=t["started"])
                for t in self._trials if t["running"] or not running]

    def handle(self, trial: LedgerTrial) -> TrialHandle:
        return _FileTrial(self, trial.number)

    def delete(self) -> None:
        self._write({"op": "delete"})

    def values(self, number: int) -> list[float] | None:
        """The objective values trial ``number`` was completed with (None: failed or open)."""
        self._catch_up()
        v = self._trials[number].get("values")
        return None if v is None else [float(x) for x in v]


__all__ = ["FILE_LEDGER_VERSION", "FileLedger"]
