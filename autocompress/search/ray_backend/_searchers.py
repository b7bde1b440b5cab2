"""The Tune searchers of the driver: Optuna's on the study, or one of ours behind ask/tell.

Each passes its proposals through the loop's admission and records results with the shared
``_Recorder``; both pickle to a ``DetachedSearcher`` stub (resume goes through the study).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autocompress.search.base import searcher_class
from autocompress.search.ledger import OptunaLedger
from autocompress.search.ray_backend._recorder import _Recorder, _trial_record, _TrialTeller

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy
    from autocompress.search.base import BaseSearcher
    from autocompress.search.session import SearchSession


class DetachedSearcher:
    """What a pickled autocompress Tune searcher becomes when unpickled: a stub that says why.

    ``tune.Tuner`` pickles its search algorithm into ``tuner.pkl`` for ``Tuner.restore``. Our
    searchers hold driver-side objects (the problem, the study's storage, the CLI's progress bar
    with its locks) that neither can nor should travel; resume goes through the Optuna study
    instead, so a searcher pickles to this stub (workers only ever get the picklable ``payload``).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise RuntimeError(f"{self.name} lives in the autocompress driver and cannot be restored from "
                           "a pickle; re-run the same `autocompress search` command to resume")


def _detached(name: str) -> DetachedSearcher:
    return DetachedSearcher(name)


def _optuna_search(session: SearchSession, recorder: _Recorder, seed: int) -> Any:
    """Tune's OptunaSearch on our study with our sampler, recording every completed trial."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    from autocompress.search._projection import make_projector
    from autocompress.search.optuna_searcher import (
        policy_from_params,
        space_distributions,
        suggest_policy,
    )

    loop = recorder.loop
    spec = session.spec
    cls = searcher_class(spec.strategy)
    context = session.make_context()
    sampler = cls.build_sampler(context, seed, **dict(spec.strategy_settings))  # type: ignore[attr-defined]
    projector = (make_projector(context) if spec.strategy_settings.get("budget_projection", True)
                 else None)
    dists = space_distributions(context.space, projector)
    space = context.space
    idle_cap = max(100, 5 * spec.trials)

    def define_space(trial: Any) -> dict[str, Any] | None:
        suggest_policy(trial, space, dists, projector)
        return None

    class RecordingOptunaSearch(OptunaSearch):
        """OptunaSearch that admits (``SearchLoop.admit``: no repeat of an evaluated model, the
        study's total shared with every process), pre-screens and records each trial."""

        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return _detached, ("RecordingOptunaSearch",)

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the state lives in the Optuna study (resume goes through it)."""

        def restore(self, checkpoint_path: str) -> None:
            """See ``save``."""

        full = False  # the study holds spec.trials candidates (with other processes')

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if self.full:
                return Searcher.FINISHED
            for _ in range(idle_cap):
                view = session.view()
                if view.counted >= spec.trials:  # other processes sharing the study count too
                    self.full = True
                    return Searcher.FINISHED
                config = super().suggest(trial_id)
                if config is None:
                    return None
                ot = self._ot_trials[trial_id]
                policy = policy_from_params(space, ot.params, projector)
                ledger = OptunaLedger(self._ot_study, session.storage)
                verdict, _ = loop.admit(policy, _TrialTeller(session, ledger, ot), view, ledger,
                                        otrial=ot)
                if verdict == "evaluate":
                    break
                del self._ot_trials[trial_id]  # finished by admit; the next ask is a new trial
                if verdict == "surplus":
                    self.full = True
                    return Searcher.FINISHED
            else:  # only repeats of evaluated models: end this round (the next gets a new seed)
                self.full = True
                return Searcher.FINISHED
            if spec.budgets and not context.predicted_feasible(policy):
                standin, _ = session.standin_result(policy)
                return {**config, "ac_infeasible": True, "ac_standin": dict(standin.metrics)}
            if projector is not None:  # the worker evaluates the projected policy, not raw params
                return {**config, "ac_policy": policy.to_json()}
            return config

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            ot = self._ot_trials.get(trial_id)
            if ot is not None and "ac_policy" in result:
                recorder.log_low(ot.number, policy_from_params(space, ot.params, projector), result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials:
                return
            ot = self._ot_trials[trial_id]
            policy = policy_from_params(space, ot.params, projector)
            res, status, values = recorder.record(ot, policy, result, error)
            ledger = OptunaLedger(self._ot_study, session.storage)
            if values is not None and status in ("ok", "infeasible"):
                ledger.finish(ot, values, session.constraints(policy, res.metrics))
            else:
                ledger.finish(ot, None)
            self._completed_trials.add(trial_id)
            if status != "infeasible":
                recorder.after(_trial_record(ot, policy, res, status, session))

    return RecordingOptunaSearch(
        space=define_space, metric=spec.objective_names,
        mode=["max" if d == "maximize" else "min" for d in spec.directions],
        sampler=sampler, study_name=spec.study_name, storage=session.storage,
    )


def _asktell_search(session: SearchSession, recorder: _Recorder, searcher: BaseSearcher) -> Any:
    """A Tune ``Searcher`` driving one of our ask/tell searchers."""
    from ray.tune.search import Searcher

    loop = recorder.loop
    spec = session.spec
    prescreen = bool(getattr(searcher, "prescreen", True)) and bool(spec.budgets)
    idle_cap = max(100, 5 * spec.trials)

    class AskTellSearcher(Searcher):
        """Tune searcher over an autocompress ``BaseSearcher`` (suggest = ask, complete = tell)."""

        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return _detached, ("AskTellSearcher",)

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the state lives in the Optuna study (resume goes through it)."""

        def restore(self, checkpoint_path: str) -> None:
            """See ``save``."""

        def __init__(self) -> None:
            super().__init__(metric=spec.objective_names[0],
                             mode="max" if spec.directions[0] == "maximize" else "min")
            self.pending: dict[str, tuple[Any, CompressionPolicy]] = {}
            self.finished = False  # the searcher has nothing more to propose
            self.full = False  # the study holds spec.trials candidates (with other processes')

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if self.finished or self.full:
                return Searcher.FINISHED
            if type(searcher).max_pending <= len(self.pending):
                return None
            idle = 0
            while idle < idle_cap:
                view = session.view()
                if view.counted >= spec.trials:  # other processes sharing the study count too
                    self.full = True
                    return Searcher.FINISHED
                policy = searcher.ask()
                if policy is None:
                    self.finished = True
                    return Searcher.FINISHED
                verdict, trial = loop.admit(policy, searcher, view, session.ledger,
                                            prescreen=prescreen)
                if verdict == "surplus":
                    self.full = True
                    return Searcher.FINISHED
                if verdict != "evaluate":
                    idle += 1
                    continue
                self.pending[trial_id] = (trial, policy)
                return {"ac_policy": policy.to_json(), "ac_trial": trial.number}
            self.finished = True
            return Searcher.FINISHED

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if trial_id in self.pending:
                trial, policy = self.pending[trial_id]
                recorder.log_low(trial.number, policy, result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            if trial_id not in self.pending:
                return
            trial, policy = self.pending.pop(trial_id)
            res, status, values = recorder.record(trial, policy, result, error)
            if values is not None and status == "ok":
                session.ledger.finish(trial, values, session.constraints(policy, res.metrics))
            else:
                session.ledger.finish(trial, None)
            searcher.tell(policy, res)
            recorder.after(_trial_record(trial, policy, res, status, session))

    return AskTellSearcher()


__all__ = ["DetachedSearcher"]
