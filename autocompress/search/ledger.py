"""The search's ledger: where every candidate of a run is recorded, shared and found again.

The session and the loop need little from it: create a pending trial (``ask``), tag it and finish
it with objective values (or as failed) and constraints (``finish``), list the trials with their
attributes (``trials``; a trial's ``user_attrs`` hold its record, see ``records.record_from_trial``),
take over an open trial of a killed process (``handle``), and keep study-level attributes (the
search's identity, the registered workers). ``file_ledger.FileLedger`` (``ledger.jsonl``) is the
default; :class:`OptunaLedger` is the Optuna study behind it for the Optuna strategies (they sample
from that same study) and for runs given ``--storage`` (it names where the study lives).

Trial numbers are dense (``0 .. n-1`` in creation order) in every ledger, so ``trials()[n]`` is
trial ``n``.

Each attribute is its own write, and other processes read between them: a trial's ``status`` is
written after its record (``SearchSession.record_attrs``), because a counted status is what other
processes take as "final, its result readable".
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from autocompress.errors import UserInputError

if TYPE_CHECKING:
    import optuna


class TrialHandle(Protocol):
    """An open trial: what the loop tags and finishes (an ``optuna.Trial`` is one)."""

    @property
    def number(self) -> int:
        """The trial's number in its ledger."""

    @property
    def user_attrs(self) -> dict[str, Any]:
        """The attributes set on it so far."""

    def set_user_attr(self, key: str, value: Any) -> None:
        """Set one attribute (JSON-serialisable)."""


@dataclass(frozen=True)
class LedgerTrial:
    """A trial as listed by :meth:`Ledger.trials` (a read-only snapshot).

    Attributes:
        number: its number (dense, creation order).
        running: created and not finished (a ``WAITING`` Optuna trial, queued and not yet
            asked, is neither running nor finished).
        user_attrs: its attributes (``status``, ``policy``, ``metrics``, ``worker``, ...).
        params: the sampler's parameters (Optuna strategies; empty otherwise).
        started: creation time (seconds since the epoch), None when unknown.
        ref: the ledger's own handle on the trial (opaque to callers).
    """

    number: int
    running: bool
    user_attrs: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    started: float | None = None
    ref: Any = field(default=None, compare=False, repr=False)


class Ledger(abc.ABC):
    """The record of a search that several processes (and a resumed process) share.

    Study-level attributes go through ``user_attrs`` / ``set_user_attr`` (the names Optuna's
    ``Study`` uses, so ``storage.register_worker`` and friends take either).
    """

    #: The Optuna storage behind the ledger (None for a ledger without Optuna).
    storage: Any = None
    #: How messages and ``pareto.json`` name where the ledger lives.
    where: str = ""

    @property
    @abc.abstractmethod
    def directions(self) -> list[str]:
        """``"minimize"`` / ``"maximize"`` per objective, as stored."""

    @property
    @abc.abstractmethod
    def user_attrs(self) -> dict[str, Any]:
        """Study-level attributes (identity, workers)."""

    @abc.abstractmethod
    def set_user_attr(self, key: str, value: Any) -> None:
        """Set one study-level attribute."""

    @abc.abstractmethod
    def ask(self) -> TrialHandle:
        """Create a running trial (the next number) and return its handle."""

    @abc.abstractmethod
    def finish(self, trial: TrialHandle, values: Sequence[float] | None,
               constraints: Mapping[str, float] | None = None) -> None:
        """Finish an open trial: complete with objective ``values`` (and ``constraints``,
        ``<= 0`` feasible), or failed when ``values`` is None."""

    @abc.abstractmethod
    def trials(self, *, running: bool = False) -> list[LedgerTrial]:
        """Every trial in number order (only the running ones with ``running``)."""

    @abc.abstractmethod
    def handle(self, trial: LedgerTrial) -> TrialHandle:
        """A handle on a listed open trial of another process (to finish a killed one's)."""

    @abc.abstractmethod
    def delete(self) -> None:
        """Remove the whole record (``--force``); the ledger is unusable afterwards."""

    def trial(self, number: int) -> LedgerTrial:
        """Trial ``number`` as it stands now."""
        return self.trials()[number]

    def requeue(self, params: Mapping[str, Any], number: int) -> None:  # noqa: B027 - optional
        """Queue sampler ``params`` of interrupted trial ``number`` for evaluation again (a
        ledger whose trials carry no parameters has nothing to queue)."""

    def for_searcher(self, searcher: Any) -> Ledger:
        """The ledger through which trials ``searcher`` asked are finished (itself by default)."""
        return self


class OptunaLedger(Ledger):
    """An Optuna study as the ledger (the trials' ``user_attrs`` hold the records).

    Args:
        study: the study (the session's, or an Optuna strategy's own object on the same storage:
            trials that strategy asked are told through it, so its sampler sees them).
        storage: the study's storage (handed to Optuna strategies and Ray's ``OptunaSearch``).
        where: how messages and ``pareto.json`` name the storage.
    """

    def __init__(self, study: optuna.Study, storage: Any = None, where: str = "") -> None:
        self.study = study
        self.storage = storage
        self.where = where

    @classmethod
    def open(cls, storage: Any, study_name: str, directions: Sequence[str], *, where: str
             ) -> OptunaLedger:
        """Open (or create) study ``study_name`` on ``storage``; ``where`` names the storage
        in errors."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(storage=storage, study_name=study_name,
                                        directions=list(directions), load_if_exists=True)
        except ValueError as exc:
            raise UserInputError(
                f"study {study_name!r} in storage {where!r} cannot be used: {exc}"
            ) from None
        return cls(study, storage, where)

    @property
    def directions(self) -> list[str]:
        return [d.name.lower() for d in self.study.directions]

    @property
    def user_attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    def set_user_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def ask(self) -> TrialHandle:
        return self.study.ask()

    def finish(self, trial: TrialHandle, values: Sequence[float] | None,
               constraints: Mapping[str, float] | None = None) -> None:
        from optuna.trial import TrialState

        if values is None:
            self.study.tell(trial, state=TrialState.FAIL)  # type: ignore[arg-type]
            return
        if constraints:
            from autocompress.search.optuna_searcher import set_constraints

            set_constraints(trial, constraints)
        self.study.tell(trial, list(values))  # type: ignore[arg-type]

    def trials(self, *, running: bool = False) -> list[LedgerTrial]:
        from optuna.trial import TrialState

        states = (TrialState.RUNNING,) if running else None
        return [
            LedgerTrial(number=t.number, running=t.state == TrialState.RUNNING,
                        user_attrs=t.user_attrs, params=t.params,
                        started=t.datetime_start.timestamp() if t.datetime_start else None,
                        ref=t._trial_id)  # noqa: SLF001 - see handle
            for t in self.study.get_trials(deepcopy=False, states=states)
        ]

    def handle(self, trial: LedgerTrial) -> TrialHandle:
        import optuna

        # NOTE: Optuna has no public handle on another process's running trial, so one is made
        # from its id.
        return optuna.trial.Trial(self.study, trial.ref)

    def delete(self) -> None:
        import optuna

        optuna.delete_study(study_name=self.study.study_name, storage=self.storage)

    def requeue(self, params: Mapping[str, Any], number: int) -> None:
        """Queue ``params`` unless they are queued already.

        Not ``enqueue_trial(skip_if_exists=True)``: that matches any trial with these parameters,
        the interrupted one included, so the candidate would never be evaluated.
        """
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if t.system_attrs.get("fixed_params", t.params) == params:
                return
        self.study.enqueue_trial(dict(params), user_attrs={"requeued_from": number})

    def for_searcher(self, searcher: Any) -> Ledger:
        """The strategy's own study object when it has one (same storage and name)."""
        study = getattr(searcher, "study", None)
        return OptunaLedger(study, self.storage, self.where) if study is not None else self


__all__ = ["Ledger", "LedgerTrial", "OptunaLedger", "TrialHandle"]
