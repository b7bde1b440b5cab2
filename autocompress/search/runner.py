"""The search loop: ask, evaluate (cached), tell, record; resumable, shareable, multi-fidelity.

``run_search(spec, progress=None)`` is the one public entry point (the CLI calls it). One trial of
the run's ledger (``ledger.py``: ``ledger.jsonl`` in the run directory, or the Optuna study for
strategies that sample from it and runs given ``--storage``) is one evaluated candidate, whatever the strategy; the ledger
is what several processes (or a resumed process) share:

* **Counting.** ``spec.trials`` counts evaluated candidates (status ``ok`` or ``failed``) plus
  candidates being evaluated right now by live processes. A candidate rejected before evaluation
  because its *predicted* costs break a hard budget is recorded as ``infeasible`` and does not
  count. A process whose new trial would exceed the count (a race with another process) marks it
  ``surplus`` and stops, so the ledger ends with exactly ``trials`` candidates.
* **No duplicates.** A proposal that builds a model already evaluated in the ledger (the same
  ``CompressionSpace.structure_key``: kept channel counts, bits and ranks after rounding, so
  ratios that round alike count as one model) is answered with the recorded result and not
  evaluated again, and ``pareto.json`` lists each model once; one that another live process is
  evaluating right now is skipped (or, for strategies that need every result in order, waited
  for).
* **Resume.** Re-running the same command continues to ``spec.trials``. A ``RUNNING`` trial of a
  killed process is finished from its final ``trials.jsonl`` line, or marked ``interrupted``
  (Optuna strategies get its parameters re-queued); a deterministic strategy restarted with the
  same seed replays its proposals and gets the recorded results back, so it continues where it
  was killed without re-evaluating anything.
* **Multi-fidelity** (``spec.multi_fidelity``): asynchronous successive halving. Every candidate
  is scored at low fidelity; it is promoted to full fidelity when its low-fidelity score (its
  ``acc``, or first maximised objective) ranks in the top ``promote_fraction`` of all
  low-fidelity scores in the ledger so far (ASHA's rule with one rung). The searcher is told the
  highest-fidelity result; only full-fidelity candidates can be on the Pareto front.
* **Failures.** A candidate whose compression or evaluation raises, or whose accuracy is NaN, is
  recorded as ``failed`` (it counts) and the search goes on.

Where each part lives: ``records.py`` (statuses, the candidate record, progress and result),
``ledger.py`` / ``file_ledger.py`` (the ledger interface, the Optuna study behind it, the
JSON-lines file), ``session.py`` (``SearchSession``: set-up, the ledger view, recording;
``build_problem``), ``resume.py`` (which ledger a run keeps, its identity check, finishing the
trials of killed processes), ``loop.py`` (``SearchLoop``: admission, evaluation, the local loop),
``_interrupts.py`` (Ctrl-C held while the ledger is written), ``ray_backend/`` (the Ray backend). The names below are
re-exported here, where callers have always imported them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autocompress.errors import UserInputError
from autocompress.search.base import PREDICTED_METRICS
from autocompress.search.loop import SearchLoop
from autocompress.search.records import (
    COUNTED_STATUSES,
    TRIAL_STATUSES,
    ProgressCallback,
    SearchProgress,
    SearchResult,
    TrialRecord,
    record_from_trial,
    result_from_trial,
    safe_evaluate,
)
from autocompress.search.session import SearchSession, build_problem
from autocompress.search.spec import SearchSpec

if TYPE_CHECKING:
    from autocompress.problem import Problem


# -- public entry ---------------------------------------------------------------------------------
def run_search(spec: SearchSpec, progress: ProgressCallback | None = None, *,
               problem: Problem | None = None) -> SearchResult:
    """Run (or resume) the search ``spec`` describes; returns the Pareto front and all candidates.

    Args:
        spec: what to search (``SearchSpec.from_cli`` / ``from_yaml`` build one).
        progress: called with a :class:`SearchProgress` during setup, after every recorded
            candidate and at the end (the CLI draws its progress bar from it).
        problem: an already built ``Problem`` for exactly this spec's model, data and space
            settings (saves rebuilding it in tests and notebooks); by default it is built.

    Returns:
        A :class:`SearchResult`; ``RUN/pareto.json``, ``RUN/trials.jsonl``, ``RUN/spec.json`` and
        the ledger are on disk.

    Raises:
        UserInputError: bad settings, an unreachable budget, or a run directory holding another
            search (see ``SearchSpec.resume`` / ``force``).

    Example:
        >>> spec = SearchSpec.from_cli(None, {"budget": ["macs=50%"], "trials": 20})  # doctest: +SKIP
        >>> result = run_search(spec)  # doctest: +SKIP
        >>> [p.metrics["acc"] for p in result.front]  # doctest: +SKIP
    """
    if not isinstance(spec, SearchSpec):
        raise UserInputError(f"run_search needs a SearchSpec, got {type(spec).__name__}")
    spec.preflight()  # paths, run directory and storage checked before anything is written
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        if spec.backend == "ray":
            from autocompress.search.ray_backend import run_ray

            return run_ray(spec, progress, problem=problem)
        session = SearchSession(spec, progress, problem=problem)
        try:
            return SearchLoop(session).run()
        finally:
            session.close()
    finally:
        torch.set_num_threads(before)


__all__ = [
    "COUNTED_STATUSES",
    "PREDICTED_METRICS",
    "ProgressCallback",
    "SearchLoop",
    "SearchProgress",
    "SearchResult",
    "SearchSession",
    "TRIAL_STATUSES",
    "TrialRecord",
    "build_problem",
    "record_from_trial",
    "result_from_trial",
    "run_search",
    "safe_evaluate",
]
