"""The search engine: ``SearchSpec`` -> ask/tell searchers -> runner -> Pareto front.

Public surface::

    from autocompress.search import SearchSpec, run_search
    spec = SearchSpec.from_cli("configs/quick.yaml", {"budget": ["macs=50%"], "trials": 20})
    result = run_search(spec, progress=print)   # RUN/{spec.json,trials.jsonl,pareto.json,ledger.jsonl}

Heavy modules (torch, optuna, ray) load on first use of the names that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # spec, objectives and budgets
    "SearchSpec": "autocompress.search.spec",
    "Objective": "autocompress.search.objectives",
    "parse_objective": "autocompress.search.objectives",
    "OBJECTIVE_METRICS": "autocompress.search.objectives",
    "Budget": "autocompress.search.budgets",
    "parse_budget": "autocompress.search.budgets",
    "BUDGET_METRICS": "autocompress.search.budgets",
    # searchers
    "BaseSearcher": "autocompress.search.base",
    "SearchContext": "autocompress.search.base",
    "create_searcher": "autocompress.search.base",
    "list_searchers": "autocompress.search.base",
    "register_searcher": "autocompress.search.base",
    "searcher_class": "autocompress.search.base",
    # runner and records
    "run_search": "autocompress.search.runner",
    "build_problem": "autocompress.search.session",
    "SearchResult": "autocompress.search.records",
    "SearchProgress": "autocompress.search.records",
    "TrialRecord": "autocompress.search.records",
    # pareto
    "hypervolume": "autocompress.search.pareto",
    "non_dominated_mask": "autocompress.search.pareto",
    "knee_index": "autocompress.search.pareto",
    "normalise": "autocompress.search.pareto",
    "qom": "autocompress.search.pareto",
    "pareto_report": "autocompress.search.pareto",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autocompress.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
