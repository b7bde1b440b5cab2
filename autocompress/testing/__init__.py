"""Test helpers for autocompress and its plug-ins: tiny models and data, and contract checks.

A new searcher, knob or evaluator passes its contract check before it is registered, the way
Optuna ships ``optuna.testing`` and Gymnasium ``check_env``::

    from autocompress.testing import check_evaluator, check_knob, check_searcher
    check_searcher("random")                      # or a BaseSearcher subclass
    check_knob("sparsity")                        # or a KnobType instance
    problem = tiny_problem()
    check_evaluator(problem.evaluator, problem.space)

Everything is seeded and small enough for a CPU test suite (see ``_tiny``).
"""

from autocompress.testing._contracts import check_evaluator, check_knob, check_searcher
from autocompress.testing._tiny import (
    TINY_MODEL,
    TINY_STRATEGY_SETTINGS,
    synthetic_result,
    tiny_context,
    tiny_data,
    tiny_model,
    tiny_problem,
    tiny_space,
)

__all__ = [
    "TINY_MODEL",
    "TINY_STRATEGY_SETTINGS",
    "check_evaluator",
    "check_knob",
    "check_searcher",
    "synthetic_result",
    "tiny_context",
    "tiny_data",
    "tiny_model",
    "tiny_problem",
    "tiny_space",
]
