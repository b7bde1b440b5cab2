"""Tiny models, data, spaces, problems and search contexts for tests of plug-ins.

Everything here is seeded and small (a few thousand parameters, 16x16 inputs, sklearn's digits),
so a contract check runs in seconds on a laptop CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from autocompress.metrics import parse_budget, predicted_costs

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace
    from autocompress.evaluators import EvalResult
    from autocompress.problem import Problem
    from autocompress.search.base import SearchContext

#: The registered test model every helper defaults to (residual, concat and depthwise layers).
TINY_MODEL = "test_convnet"
#: Settings that keep each built-in strategy small in tests (tiny networks, one warm-up episode,
#: small populations); strategies not named need none.
TINY_STRATEGY_SETTINGS: dict[str, dict[str, object]] = {
    "ddpg": {"net_arch": [16, 16], "warmup_episodes": 1},
    "td3": {"net_arch": [16, 16], "warmup_episodes": 1},
    "sac": {"net_arch": [16, 16], "warmup_episodes": 1},
    "ddpg_bc": {"net_arch": [16, 16], "warmup_episodes": 1},
    "ppo": {"net_arch": [16], "episodes_per_update": 2},
    "nsga2": {"population_size": 4},
    "tpe": {"n_startup_trials": 2},
}
#: Evaluator settings of a tiny problem: no latency, small validation subsets.
TINY_EVAL_SETTINGS = {"latency": "none", "val_samples": 96, "low_fidelity_val_samples": 48,
                      "recalib_batches": 2, "recalib_batch_size": 32}


def tiny_model(name: str = TINY_MODEL, *, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """``(model, example input)``: a registered test model, seeded, in eval mode, and one input
    sample of its default shape (batch 1)."""
    from autocompress.models import create_model, default_input_shape

    torch.manual_seed(seed)
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(1, *default_input_shape(name, model), generator=torch.Generator().manual_seed(seed + 1))
    return model, x


def tiny_data(n: int = 64, shape: Sequence[int] = (3, 16, 16), classes: int = 10, *, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: ``n`` random inputs of ``shape`` and labels in ``range(classes)``, seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def tiny_space(knobs: Sequence[str] = ("prune", "w_bits", "a_bits", "rank"), name: str = TINY_MODEL,
               *, seed: int = 0) -> tuple[nn.Module, torch.Tensor, CompressionSpace]:
    """``(model, example input, space over knobs)`` of :func:`tiny_model` (exact channel counts)."""
    from autocompress.compression import CompressionSpace

    model, x = tiny_model(name, seed=seed)
    return model, x, CompressionSpace.from_model(model, x, knobs=tuple(knobs))


def tiny_problem(name: str = TINY_MODEL, *, knobs: Sequence[str] = ("prune",), train_epochs: int = 4,
                 seed: int = 0) -> Problem:
    """A ``Problem`` on digits: ``name`` trained ``train_epochs`` epochs (cached like any base
    model), no latency, small validation subsets."""
    from autocompress.evaluators import EvaluatorConfig
    from autocompress.problem import Problem

    return Problem.build(name, data="digits", knobs=tuple(knobs), train_epochs=train_epochs, seed=seed,
                         evaluator=EvaluatorConfig(**TINY_EVAL_SETTINGS), progress=False)


def tiny_context(space: CompressionSpace | None = None, *, budgets: Sequence[str] = ("macs=50%",),
                 trials: int = 8) -> SearchContext:
    """A ``SearchContext`` maximising ``acc`` and minimising ``macs`` under ``budgets`` (relative
    to the space's identity policy), over ``space`` (default :func:`tiny_space` with pruning
    only; a problem's ``problem.space`` for a trained model). Like every context it holds no
    problem and no evaluator: searchers are told results, here :func:`synthetic_result`.
    Optuna searchers get an in-memory study."""
    from autocompress.search.base import SearchContext
    from autocompress.search.objectives import Objective

    if space is None:
        space = tiny_space(("prune",))[2]
    base = predicted_costs(space.costs(space.identity()))
    base["acc"] = 1.0
    parsed = tuple(parse_budget(b) for b in budgets)
    return SearchContext(space=space, objectives=(Objective("acc", "maximize"), Objective("macs", "minimize")),
                         budgets=parsed, base_metrics=base,
                         limits={b.name: b.limit(base) for b in parsed}, trials=trials)


def synthetic_result(context: SearchContext, policy: CompressionPolicy) -> EvalResult:
    """An ``EvalResult`` without evaluating a model: the space's predicted costs, and an
    accuracy that falls with the share of MACs removed (deterministic, so searchers that learn
    from it propose the same policies for the same seed)."""
    from autocompress.evaluators import EvalResult

    metrics = context.predicted_metrics(policy)
    base_macs = float(context.space.macs(context.space.identity())) or 1.0
    metrics["acc"] = 0.5 + 0.5 * (metrics["macs"] / base_macs) ** 0.5
    return EvalResult(metrics=metrics)
