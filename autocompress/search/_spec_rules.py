"""The value rules of a search's settings: numbers, strings, lists, budgets, strategy settings.

Each rule returns the normalised value or raises ``UserInputError`` naming the setting, the value
and what is allowed. ``SearchSpec.__post_init__`` applies them to its fields, and
``check_strategy_settings`` to a strategy's ``--set`` values (a rule per setting name, the same
name meaning the same thing in every searcher, else one from the type of the searcher's default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from autocompress.errors import UserInputError
from autocompress.metrics import Budget, parse_budget


def check_int(key: str, v: Any, lo: int, hi: int | None = None) -> int:
    """An integer in ``lo..hi`` (also an integral float or a numeric string, as flags give)."""
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str) and re.fullmatch(r"[-+]?\d+", v.strip()):
            v = int(v)
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise UserInputError(f"{key}={v!r} is not an integer; allowed: an integer >= {lo}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"{lo}..{hi}"
        raise UserInputError(f"{key}={v!r} is out of range; allowed: {rng}")
    return int(v)


def check_float(key: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); numeric strings too."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise UserInputError(f"{key}={v!r} is not a number") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise UserInputError(f"{key}={v!r} is not a number")
    if (v <= lo if lo_open else v < lo) or v > hi:
        left = "(" if lo_open else "["
        raise UserInputError(f"{key}={v!r} is out of range; allowed: {left}{lo:g}, {hi:g}]")
    return float(v)


def check_bool(key: str, v: Any) -> bool:
    """A boolean, or its spelling in a flag (``yes``, ``off``, ``1`` ...)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return v.strip().lower() in ("true", "yes", "1", "on")
    raise UserInputError(f"{key}={v!r} is not a boolean; allowed: true, false")


def check_str(key: str, v: Any, optional: bool = True) -> str | None:
    """A non-empty string, stripped (None passes when ``optional``)."""
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v.strip():
        what = "a non-empty string" + (" or null" if optional else "")
        raise UserInputError(f"{key}={v!r} is not allowed; expected {what}")
    return v.strip()


def as_list(key: str, v: Any) -> list[Any]:
    """A list from a list, a comma-separated string or a mapping (as ``name=value`` items)."""
    if v is None:
        return []
    if isinstance(v, str):
        return [s for s in (x.strip() for x in v.split(",")) if s] if "," in v and "=" not in v else [v]
    if isinstance(v, Mapping):
        return [f"{k}={val}" for k, val in v.items()]
    if isinstance(v, Sequence):
        return list(v)
    raise UserInputError(f"{key}={v!r} is not a list")


def budget_list(key: str, v: Any) -> tuple[Budget, ...]:
    """Budgets, each metric once and a relative one at most 100%."""
    items = as_list(key, v)
    out = [parse_budget(x if isinstance(x, Budget) else str(x)) for x in items]
    for b in out:
        if b.relative and b.value > 1.0:
            raise UserInputError(
                f"{key}: budget {b.text!r} allows more than the uncompressed model; a relative "
                "budget must be at most 100%"
            )
    names = [b.name for b in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserInputError(f"{key}: budget {sorted(dup)[0]!r} is given more than once")
    return tuple(out)


def _opt(check: Any) -> Any:
    """A rule that also accepts null (the searcher's own default)."""
    return lambda key, v: None if v is None else check(key, v)


def _int_rule(lo: int, hi: int | None = None) -> Any:
    return lambda key, v: check_int(key, v, lo, hi)


def _float_rule(lo: float, hi: float, lo_open: bool = False) -> Any:
    return lambda key, v: check_float(key, v, lo, hi, lo_open)


def _str_rule(key: str, v: Any) -> str | None:
    return check_str(key, v, optional=False)


def _choice_rule(*allowed: str) -> Any:
    def check(key: str, v: Any) -> str:
        if not isinstance(v, str) or v not in allowed:
            raise UserInputError(f"{key}={v!r} is not allowed; allowed: {', '.join(allowed)}")
        return v

    return check


def _device_rule(key: str, v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", v):
        raise UserInputError(f"{key}={v!r} is not allowed; allowed: cpu, cuda, cuda:N, auto")
    return v


def _net_arch_rule(key: str, v: Any) -> list[int]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or not v:
        raise UserInputError(f"{key}={v!r} is not allowed; allowed: a non-empty list of layer widths, e.g. [64, 64]")
    return [check_int(f"{key} width", x, 1, 65536) for x in v]


def _levels_rule(key: str, v: Any) -> list[float]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or not v:
        raise UserInputError(f"{key}={v!r} is not allowed; allowed: a non-empty list of unit levels in (0, 1]")
    return [check_float(f"{key} level", x, 0.0, 1.0, lo_open=True) for x in v]


def _budget_range_rule(key: str, v: Any) -> list[float]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or len(v) != 2:
        raise UserInputError(f"{key}={v!r} is not allowed; allowed: [low, high] with 0 < low <= high <= 1")
    lo = check_float(f"{key} low", v[0], 0.0, 1.0, lo_open=True)
    hi = check_float(f"{key} high", v[1], 0.0, 1.0, lo_open=True)
    if lo > hi:
        raise UserInputError(f"{key}={list(v)!r} is not allowed; allowed: [low, high] with 0 < low <= high <= 1")
    return [lo, hi]


def _mapping_rule(key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise UserInputError(f"{key}={v!r} is not a mapping")
    return dict(v)


#: Value rules of strategy settings by name (the same name means the same thing in every
#: searcher); each returns the normalised value or raises ``UserInputError`` naming it. A
#: setting without a rule is checked against the type of its constructor default.
_SETTING_RULES: dict[str, Any] = {
    # Optuna NSGA-II / TPE
    "population_size": _opt(_int_rule(2, 100_000)),
    "mutation_prob": _opt(_float_rule(0.0, 1.0)),
    "crossover_prob": _float_rule(0.0, 1.0),
    "n_startup_trials": _opt(_int_rule(0, 1_000_000)),
    "budget_projection": check_bool,
    "multivariate": check_bool,
    "constant_liar": check_bool,
    # baselines
    "max_tries": _int_rule(1, 1_000_000),
    "ladder_fraction": _float_rule(0.0, 1.0),
    "sigma": _float_rule(0.0, 1.0),
    "best_share": _float_rule(0.0, 1.0),
    "cost_jitter": _float_rule(0.0, 1.0),
    "points": _opt(_int_rule(1, 1_000_000)),
    "levels": _levels_rule,
    "steps": _int_rule(1, 1_000_000),
    # RL adapters and agents
    "reward": _choice_rule("acc", "r_flops", "lagrangian", "weighted"),
    "reward_weights": _opt(_mapping_rule),
    "warmup_episodes": _opt(_int_rule(0, 1_000_000)),
    "total_episodes": _opt(_int_rule(1, 100_000_000)),
    "budget_range": _opt(_budget_range_rule),
    "net_arch": _net_arch_rule,
    "actor_lr": _float_rule(0.0, 10.0, lo_open=True),
    "critic_lr": _float_rule(0.0, 10.0, lo_open=True),
    "learning_rate": _float_rule(0.0, 10.0, lo_open=True),
    "tau": _float_rule(0.0, 1.0, lo_open=True),
    "batch_size": _int_rule(1, 1_000_000),
    "gamma": _float_rule(0.0, 1.0),
    "noise_sigma": _float_rule(0.0, 100.0),
    "noise_decay": _float_rule(0.0, 1.0, lo_open=True),
    "action_sigma": _float_rule(0.0, 100.0),
    "buffer_episodes": _int_rule(1, 10_000_000),
    "baseline_alpha": _float_rule(0.0, 1.0),
    "episodes_per_update": _int_rule(1, 1_000_000),
    "n_epochs": _int_rule(1, 1_000_000),
    "gae_lambda": _float_rule(0.0, 1.0),
    "ent_coef": _float_rule(0.0, 100.0),
    "verbose": _int_rule(0, 2),
    "device": _device_rule,
    "tensorboard_log": _opt(_str_rule),
    "policy_kwargs": _opt(_mapping_rule),
    "agent_settings": _opt(_mapping_rule),
}


def _default_type_rule(default: Any) -> Any:
    """A rule from the type of a constructor default (for settings without an explicit rule)."""
    if isinstance(default, bool):
        return check_bool
    if isinstance(default, int):
        return lambda key, v: check_int(key, v, -(2**63), 2**63 - 1)
    if isinstance(default, float):
        return lambda key, v: check_float(key, v, -math.inf, math.inf)
    return None


def _setting_defaults(cls: Any) -> dict[str, Any]:
    import inspect

    out: dict[str, Any] = {}
    fns = [cls.__init__]
    agent_name = getattr(cls, "agent_name", "")
    if agent_name:
        from autocompress.policies import agent_class

        klass = agent_class(agent_name)
        fns += [klass.__init__, getattr(klass, "_build", None)]
    for fn in fns:
        if fn is None:
            continue
        for n, p in inspect.signature(fn).parameters.items():
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty:
                out.setdefault(n, p.default)
    return out


def check_strategy_settings(strategy: str, settings: Mapping[str, Any],
                            soft_budgets: Sequence[Budget] = ()) -> dict[str, Any]:
    """Check the names *and values* of a strategy's settings; returns them normalised.

    Runs while the spec is built, so a bad ``--set`` fails before anything is trained or
    written (the searcher itself is only constructed once the run directory exists).
    """
    from autocompress.search.base import searcher_class

    cls = searcher_class(strategy)
    cls.check_settings(settings)
    defaults: dict[str, Any] | None = None
    out: dict[str, Any] = {}
    for key, value in settings.items():
        rule = _SETTING_RULES.get(key)
        if rule is None:
            if defaults is None:
                defaults = _setting_defaults(cls)
            rule = _default_type_rule(defaults.get(key))
        out[key] = value if rule is None else rule(key, value)
    if "reward" in out or "reward_weights" in out:
        from autocompress.envs._features import check_reward_settings

        check_reward_settings(out.get("reward", "acc"), out.get("reward_weights"),
                              {b.metric: 1.0 for b in soft_budgets})
    return out


__all__ = [
    "as_list",
    "budget_list",
    "check_bool",
    "check_float",
    "check_int",
    "check_str",
    "check_strategy_settings",
]
