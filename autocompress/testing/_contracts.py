"""Contract checks every searcher, knob and evaluator must pass before it is registered.

Each check raises ``AssertionError`` saying which part of the contract failed (so it reads as a
test failure under pytest, and still fails under ``python -O``), and returns what it observed
for further assertions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from autocompress.compression.knobs import knob_type
from autocompress.compression.policy import CompressionPolicy
from autocompress.errors import UserInputError
from autocompress.metrics import VOCABULARY, Direction, predicted_costs
from autocompress.testing._tiny import synthetic_result, tiny_context, tiny_space

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace
    from autocompress.compression.knobs import KnobType
    from autocompress.evaluators import BaseEvaluator, EvalResult
    from autocompress.search.base import BaseSearcher, SearchContext


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# -- searchers ------------------------------------------------------------------------------------
def _proposals(cls: type[BaseSearcher], context: SearchContext, seed: int, n: int,
               settings: Mapping[str, Any]) -> list[CompressionPolicy]:
    cls.check_settings(settings)
    searcher = cls(context, seed=seed, **settings)
    out: list[CompressionPolicy] = []
    try:
        for i in range(n):
            policy = searcher.ask()
            if policy is None:
                break
            _expect(isinstance(policy, CompressionPolicy),
                    f"{cls.__name__}.ask() #{i} returned {type(policy).__name__}, not a CompressionPolicy")
            try:
                context.space.validate(policy)
            except UserInputError as exc:
                raise AssertionError(f"{cls.__name__}.ask() #{i} is not valid in the space: {exc}") from None
            searcher.tell(policy, synthetic_result(context, policy))
            out.append(policy)
        state = searcher.state_dict()
        try:
            json.dumps(state)
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"{cls.__name__}.state_dict() is not JSON-serialisable: {exc}") from None
    finally:
        searcher.close()
    return out


def check_searcher(searcher: str | type[BaseSearcher],
                   context: Callable[[], SearchContext] | None = None, *,
                   settings: Mapping[str, Any] | None = None, n: int = 4, seed: int = 0
                   ) -> list[CompressionPolicy]:
    """A searcher's contract: ``n`` ask/tell round trips with results it did not evaluate,
    every proposal a valid policy of the space, the same seed giving the same proposals, and a
    JSON-serialisable ``state_dict``; ``close`` is called.

    Args:
        searcher: a registered strategy name or a ``BaseSearcher`` subclass.
        context: builds a fresh ``SearchContext`` per run (default :func:`tiny_context`, for
            every strategy: none needs a problem).
        settings: the strategy's settings (keep them small: tiny networks, short warm-ups).
        n: ask/tell round trips per run.
        seed: the seed of both runs.

    Returns:
        The proposals of the first run.
    """
    from autocompress.search.base import searcher_class

    cls = searcher_class(searcher) if isinstance(searcher, str) else searcher
    make = context or tiny_context
    settings = dict(settings or {})
    first = _proposals(cls, make(), seed, n, settings)
    _expect(len(first) > 0, f"{cls.__name__} proposed nothing in {n} asks")
    again = _proposals(cls, make(), seed, n, settings)
    _expect(first == again, f"{cls.__name__}: the same seed ({seed}) gave different proposals")
    return first


# -- knobs ----------------------------------------------------------------------------------------
def _unit_round_trip(kt: KnobType, knob: Any, where: str) -> None:
    least, most = knob.least_compressed, knob.most_compressed
    _expect(kt.from_unit(knob, 0.0) == least, f"{where}: from_unit(0) is not the least compressed value")
    _expect(kt.from_unit(knob, 1.0) == most, f"{where}: from_unit(1) is not the most compressed value")
    _expect(kt.to_unit(knob, least) == 0.0 and kt.to_unit(knob, most) == 1.0,
            f"{where}: to_unit does not map the least / most compressed values to 0 / 1")
    values = list(knob.choices) if getattr(knob, "choices", None) else \
        [least + f * (most - least) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    for v in values:
        back = kt.from_unit(knob, kt.to_unit(knob, v))
        _expect(math.isclose(float(back), float(v), rel_tol=1e-9, abs_tol=1e-12),
                f"{where}: from_unit(to_unit({v!r})) = {back!r}")
    steps = [kt.to_unit(knob, kt.from_unit(knob, i / 40)) for i in range(41)]
    _expect(all(b >= a for a, b in zip(steps, steps[1:], strict=False)),
            f"{where}: the unit mapping is not monotone")


#: Tiny registered models a knob is checked on when none is named: the first that offers it.
KNOB_MODELS: tuple[str, ...] = ("test_resnet", "test_gru")


def check_knob(knob: str | KnobType, model: str | None = None, *, seed: int = 0
               ) -> CompressionSpace:
    """A knob type's contract on a tiny model (``model``, else the first of ``KNOB_MODELS`` with
    a layer offering the knob), in a space offering only this knob:

    * its identity value on every point leaves the model's outputs bit-identical;
    * the unit mapping round-trips (``from_unit(to_unit(v)) == v``, ends at 0 and 1, monotone);
    * at a middle and at the most compressed value the cost model equals what is counted on the
      compressed module: MACs and parameters exactly, bytes and BOPs to 1e-9;
    * the most compressed value lowers at least one of the costs it declares.

    Returns:
        The space the knob was checked in.
    """
    from autocompress.compression import (
        CompressionPolicy,
        LayerAction,
        compress,
        count_bops,
        count_macs,
        count_params,
        count_size_bytes,
    )

    kt = knob_type(knob) if isinstance(knob, str) else knob
    for name in (model,) if model is not None else KNOB_MODELS:
        model_, x, space = tiny_space((kt.name,), name, seed=seed)
        points = [p for p in space.decision_points if kt.name in p.knobs]
        if points:
            break
    _expect(bool(points), f"knob {kt.name!r} is offered at no layer of {model or KNOB_MODELS}")
    with torch.no_grad():
        reference = model_(x)
        identity = CompressionPolicy({p.name: LayerAction(**{kt.name: kt.identity}) for p in points})
        _expect(identity == space.identity(), f"knob {kt.name!r}: its identity value is not the identity policy")
        out = compress(model_, identity, space=space).eval()(x)
    _expect(torch.equal(out, reference), f"knob {kt.name!r}: the identity value changes the outputs")
    for p in points:
        _unit_round_trip(kt, p.knobs[kt.name], f"knob {kt.name!r} at {p.name!r}")
    for u in (0.5, 1.0):
        policy = CompressionPolicy({p.name: LayerAction(**{kt.name: kt.from_unit(p.knobs[kt.name], u)})
                                    for p in points})
        small = compress(model_, policy, space=space).eval()
        costs = space.costs(policy)
        where = f"knob {kt.name!r} at unit {u}"
        _expect(space.macs(policy) == count_macs(small, x),
                f"{where}: predicted MACs {space.macs(policy)} != counted {count_macs(small, x)}")
        _expect(costs["params"] == count_params(small),
                f"{where}: predicted params {costs['params']} != counted {count_params(small)}")
        _expect(math.isclose(costs["size_bytes"], count_size_bytes(small), rel_tol=1e-9),
                f"{where}: predicted bytes {costs['size_bytes']} != counted {count_size_bytes(small)}")
        _expect(math.isclose(costs["bops"], count_bops(small, x), rel_tol=1e-9),
                f"{where}: predicted BOPs {costs['bops']} != counted {count_bops(small, x)}")
    base = space.costs(space.identity())
    predicted = [c for c in kt.costs if c in costs]  # latency is not the cost model's
    _expect(not predicted or any(costs[c] < base[c] for c in predicted),
            f"knob {kt.name!r}: its most compressed value lowers none of {predicted}")
    return space


# -- evaluators -----------------------------------------------------------------------------------
#: Metrics whose value depends on the machine's timing, left out of the repeatability check.
_TIMED = frozenset({"latency_ms"})


def check_evaluator(evaluator: BaseEvaluator, space: CompressionSpace) -> dict[str, EvalResult]:
    """An evaluator's contract on ``space`` (the space its model was built with):

    * it declares its metrics with directions, all of them in the metric vocabulary;
    * the identity and the most compressed policy come back ``ok`` at both fidelities, with the
      fidelity asked for, and finite values only for declared metrics;
    * the predicted cost metrics it reports equal the space's cost model;
    * the same policy scores the same again (timed metrics aside);
    * an unknown fidelity is a ``UserInputError``.

    Returns:
        The results by name (``identity``, ``compressed``, ``compressed_low``).
    """
    name = type(evaluator).__name__
    declared = getattr(evaluator, "metrics", None)
    _expect(isinstance(declared, Mapping) and bool(declared), f"{name} declares no metrics")
    for m, d in declared.items():
        _expect(m in VOCABULARY, f"{name} declares {m!r}, which is not in metrics.VOCABULARY")
        _expect(isinstance(d, Direction), f"{name}: the direction of {m!r} is not a Direction")
    results = {
        "identity": evaluator.evaluate(space.identity(), fidelity="full"),
        "compressed": evaluator.evaluate(space.most_compressed(), fidelity="full"),
        "compressed_low": evaluator.evaluate(space.most_compressed(), fidelity="low"),
    }
    for key, res in results.items():
        _expect(res.ok, f"{name}: the {key} policy failed: {res.error}")
        _expect(res.fidelity == ("low" if key.endswith("low") else "full"),
                f"{name}: the {key} result has fidelity {res.fidelity!r}")
        extra = set(res.metrics) - set(declared)
        _expect(not extra, f"{name}: the {key} result reports undeclared metrics {sorted(extra)}")
        _expect(all(math.isfinite(v) for v in res.metrics.values()),
                f"{name}: the {key} result has non-finite metrics {res.metrics}")
    for key, policy in (("identity", space.identity()), ("compressed", space.most_compressed())):
        predicted = predicted_costs(space.costs(policy))
        for m, v in results[key].metrics.items():
            if m in predicted:
                _expect(math.isclose(v, predicted[m], rel_tol=1e-9),
                        f"{name}: {m} of the {key} policy is {v}, the cost model says {predicted[m]}")
    again = evaluator.evaluate(space.most_compressed(), fidelity="full")
    for m, v in results["compressed"].metrics.items():
        if m not in _TIMED:
            _expect(again.metrics.get(m) == v, f"{name}: {m} changed on a second evaluation "
                                               f"({v} then {again.metrics.get(m)})")
    try:
        evaluator.evaluate(space.identity(), fidelity="medium")
    except UserInputError:
        pass
    else:
        raise AssertionError(f"{name}: fidelity 'medium' was accepted; allowed: full, low")
    return results
