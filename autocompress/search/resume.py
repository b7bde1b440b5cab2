"""Continuing a run: which ledger it keeps, its identity check, and the trials killed processes
left open.

``open_ledger`` opens the run's ledger (``ledger_kind``: ``ledger.jsonl`` for a new run of a
strategy that does not sample from Optuna and names no ``--storage``, the Optuna study for the
others; an existing run keeps the one it started with) and claims it for this search: a ledger of another search
is refused (or replaced under ``--force``), one written by an older autocompress whose settings
are this search's with newer settings at their defaults is taken over. ``reconcile`` finishes
the ``RUNNING`` trials of dead processes from their final ``trials.jsonl`` line, or marks them
``interrupted`` so the candidate is evaluated again.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autocompress.compression.policy import CompressionPolicy
from autocompress.errors import UserInputError
from autocompress.search import storage as st
from autocompress.search.base import searcher_class
from autocompress.search.file_ledger import FileLedger
from autocompress.search.ledger import Ledger, OptunaLedger
from autocompress.search.spec import SearchSpec

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy
    from autocompress.search.session import SearchSession

#: Study-level attributes naming the search a ledger belongs to.
IDENTITY_ATTR = "autocompress_identity"
SPEC_ATTR = "autocompress_spec"

#: Environment variable overriding the ledger of a new run that could record into
#: ``ledger.jsonl``: ``optuna`` keeps it in the Optuna study (``RUN/study.journal``, readable with
#: Optuna's own tools) with the run's settings unchanged; ``file`` (or unset) is the default. It
#: never changes an existing run (it keeps the ledger it started with) nor a run that needs the
#: study (an Optuna sampler, or ``--storage``).
LEDGER_ENV = "AUTOCOMPRESS_LEDGER"
LEDGER_KINDS = ("optuna", "file")


def requested_ledger() -> str:
    """The ledger ``AUTOCOMPRESS_LEDGER`` asks for (``file`` when unset); a value other than
    ``LEDGER_KINDS`` is a one-line ``UserInputError``."""
    kind = os.environ.get(LEDGER_ENV, "").strip() or "file"
    if kind not in LEDGER_KINDS:
        raise UserInputError(f"{LEDGER_ENV}={kind!r} is not allowed; allowed: {', '.join(LEDGER_KINDS)}")
    return kind


def ledger_kind(spec: SearchSpec) -> str:
    """The ledger ``spec``'s run records into: the one it started with (``ledger.jsonl`` present:
    ``file``; an Optuna study file present: ``optuna``); for a new run ``file`` unless the
    strategy samples from the Optuna study, ``--storage`` names where the study lives, or
    ``AUTOCOMPRESS_LEDGER=optuna`` asks for the study."""
    run = spec.run_dir
    if (run / st.LEDGER_FILE).is_file():
        return "file"
    if (run / st.JOURNAL_FILE).is_file() or (run / st.SQLITE_FILE).is_file():
        return "optuna"
    if (spec.storage is None and not searcher_class(spec.strategy).uses_optuna_study
            and requested_ledger() == "file"):
        return "file"
    return "optuna"


def run_ledger(spec: SearchSpec) -> Ledger:
    """The run's ledger (``ledger_kind``) as it stands, not checked against ``spec``'s search
    (what a reader of a finished run, or ``open_ledger`` before its check, opens)."""
    if ledger_kind(spec) == "file":
        return FileLedger.open(spec.run_dir / st.LEDGER_FILE, spec.study_name, spec.directions)
    return OptunaLedger.open(st.open_storage(spec), spec.study_name, spec.directions,
                             where=st.storage_url_for(spec))


def same_search(stored_identity: Any, identity_hash: str) -> bool:
    """Whether a ledger's stored settings, with settings added since filled in by their defaults,
    are the search of ``identity_hash`` (so a newer autocompress resumes an older run)."""
    if not isinstance(stored_identity, Mapping):
        return False
    fields = set(SearchSpec.field_names())
    if not set(stored_identity) <= fields:
        return False
    try:
        return SearchSpec.from_dict(dict(stored_identity)).identity_hash() == identity_hash
    except (UserInputError, TypeError, ValueError):
        return False


def open_ledger(spec: SearchSpec) -> Ledger:
    """The run's ledger (``ledger_kind``), checked to hold this search."""
    ledger = run_ledger(spec)
    return claim(ledger, spec, ledger.where, reopen=lambda: open_ledger(spec))


def claim(ledger: Ledger, spec: SearchSpec, where: str, reopen: Any) -> Ledger:
    """Check ``ledger`` optimises ``spec``'s directions and belongs to its search (a new one is
    stamped with it); under ``--force`` a ledger of another search is deleted and ``reopen()``
    returns the fresh one."""
    directions = spec.directions
    if ledger.directions != directions:
        raise UserInputError(
            f"study {spec.study_name!r} in {where!r} optimises {ledger.directions}, not "
            f"{directions}; use another --study-name or storage"
        )
    stored = ledger.user_attrs.get(IDENTITY_ATTR)
    mine = spec.identity_hash()
    if stored is None or (stored != mine and same_search(ledger.user_attrs.get(SPEC_ATTR), mine)):
        # New, or written by a version without some newer setting, all of them at their defaults.
        ledger.set_user_attr(IDENTITY_ATTR, mine)
        ledger.set_user_attr(SPEC_ATTR, st.jsonable(spec.identity()))
    elif stored != mine and not spec.resume:
        if spec.force:
            ledger.delete()
            return reopen()  # type: ignore[no-any-return]
        raise UserInputError(
            f"study {spec.study_name!r} in {where!r} belongs to a different "
            "search; use another --study-name, --resume to continue it, or --force to replace it"
        )
    return ledger


def reconcile(session: SearchSession, ledger: Ledger, requeue: bool, own: bool = False
              ) -> list[int]:
    """Finish ``RUNNING`` trials of dead processes (and this one's with ``own``); returns their
    numbers.

    From its final ``trials.jsonl`` line when the killed process got that far (nothing is lost),
    else ``interrupted`` (the candidate is evaluated again later: Optuna strategies get its
    parameters re-queued; deterministic ones re-propose it).

    Args:
        session: the open run (its ledger lists the trials, its log holds the final lines).
        ledger: what finishes them (an Optuna strategy's own study object, so its sampler sees
            them; see ``Ledger.for_searcher``).
        requeue: re-queue an interrupted trial's parameters, and complete a recovered
            ``infeasible`` one with its stand-in values (Optuna strategies).
        own: include this process's own open trials (after Ctrl-C).
    """
    workers = st.study_workers(session.ledger)
    me = session.worker.uuid
    now = time.time()
    finals: dict[int, dict[str, Any]] | None = None
    fixed = []
    others_alive = any(w.uuid != me and w.alive(now) for w in workers.values())
    for t in session.ledger.trials(running=True):
        owner = t.user_attrs.get("worker")
        if owner is None:
            # Killed between creating the trial and tagging it. With no other live process
            # on the study nobody can still own it; otherwise give its owner time to tag it.
            started = t.started if t.started is not None else now
            if others_alive and now - started < st.OWNERLESS_AFTER_S:
                continue
        else:
            w = workers.get(owner)
            if owner == me:
                if not own:
                    continue
            elif w is not None and w.alive(now):
                continue
        if finals is None:
            finals = {}
            for rec in session.log.read():
                if rec.get("final") and rec.get("study") == session.spec.study_name:
                    finals[int(rec["trial"])] = rec
        rec = finals.get(t.number)
        trial = ledger.handle(t)
        if rec is not None and rec.get("status") in ("ok", "failed", "infeasible"):
            policy = _policy(rec["policy"])
            metrics = {k: (math.nan if v is None else float(v))
                       for k, v in (rec.get("metrics") or {}).items()}
            attrs = st.jsonable({  # status last: readers take a counted status as final
                "metrics": metrics,
                "fidelity": rec.get("fidelity", "full"), "feasible": bool(rec.get("feasible")),
                "violations": rec.get("violations") or {}, "error": rec.get("error"),
                "timings": rec.get("timings") or {}, "recovered": True, "status": rec["status"],
            })
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            if rec["status"] == "infeasible":
                metrics = session.standin_result(policy)[0].metrics
            values = session.objective_values(metrics)
            if rec["status"] in ("ok", "infeasible") and values is not None and (
                    rec["status"] == "ok" or requeue):
                ledger.finish(trial, values, session.constraints(policy, metrics))
            else:
                ledger.finish(trial, None)
        else:
            trial.set_user_attr("status", "interrupted")
            ledger.finish(trial, None)
            if requeue and t.params:
                ledger.requeue(dict(t.params), t.number)
        fixed.append(t.number)
    return fixed


def _policy(d: Mapping[str, Any]) -> CompressionPolicy:
    return CompressionPolicy.from_dict(d)


__all__ = ["LEDGER_ENV", "LEDGER_KINDS", "claim", "ledger_kind", "open_ledger", "reconcile",
           "requested_ledger", "run_ledger", "same_search"]
