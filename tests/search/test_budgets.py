"""Budget strings: units, relative budgets, and one-line errors for malformed values."""

from __future__ import annotations

import pytest

from autocompress.errors import UserInputError
from autocompress.search.budgets import Budget, parse_budget

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("text", "name", "value", "relative"),
    [
        ("flops=50M", "flops", 50e6, False),
        ("macs=1.2G", "macs", 1.2e9, False),
        ("macs=300k", "macs", 300e3, False),
        ("macs=5e7", "macs", 5e7, False),
        ("params=100K", "params", 100e3, False),
        ("bops=2G", "bops", 2e9, False),
        ("size=1.5MB", "size", 1.5e6, False),
        ("size=500KB", "size", 500e3, False),
        ("size=2MiB", "size", 2 * 2**20, False),
        ("size=64KiB", "size", 64 * 1024, False),
        ("size=100000", "size", 100000.0, False),
        ("latency=2ms", "latency", 2.0, False),
        ("latency=500us", "latency", 0.5, False),
        ("latency=0.01s", "latency", 10.0, False),
        ("latency=3", "latency", 3.0, False),
        ("macs=50%", "macs", 0.5, True),
        ("latency=80%", "latency", 0.8, True),
        ("acc-drop=1%", "acc-drop", 0.01, False),
        ("acc_drop=0.02", "acc-drop", 0.02, False),
        ("size_bytes=1KB", "size", 1000.0, False),
        (" MACS = 50% ", "macs", 0.5, True),
    ],
)
def test_parse_budget_units(text: str, name: str, value: float, relative: bool) -> None:
    b = parse_budget(text)
    assert b.name == name
    assert b.value == pytest.approx(value)
    assert b.relative is relative


@pytest.mark.parametrize(
    ("text", "must_name"),
    [
        ("flops=fifty", "fifty"),
        ("latency=-1ms", "negative"),
        ("size=10XB", "XB"),
        ("watts=5", "watts"),
        ("macs", "METRIC=VALUE"),
        ("macs=0", "> 0"),
        ("macs=0%", "> 0%"),
        ("acc-drop=150%", "100%"),
        ("acc-drop=3", "fraction"),
        ("latency=2kg", "kg"),
        ("params=1.5MB", "MB"),
    ],
)
def test_malformed_budgets_raise_one_line(text: str, must_name: str) -> None:
    with pytest.raises(UserInputError) as info:
        parse_budget(text)
    msg = str(info.value)
    assert "\n" not in msg
    assert must_name in msg
    if must_name != "METRIC=VALUE":
        assert "allowed" in msg or "expected" in msg


def test_limits_and_violations() -> None:
    base = {"macs": 1000.0, "acc": 0.9, "latency_ms": 4.0}
    half = parse_budget("macs=50%")
    assert half.limit(base) == 500.0
    assert half.violation({"macs": 400.0}, base) < 0 < half.violation({"macs": 600.0}, base)
    drop = parse_budget("acc-drop=1%")
    assert drop.limit(base) == pytest.approx(0.89)
    assert drop.violation({"acc": 0.895}, base) < 0 < drop.violation({"acc": 0.85}, base)
    assert parse_budget("latency=2ms").limit(base) == 2.0
    assert half.violation({}, base) == 1.0  # a missing metric breaks the budget
    with pytest.raises(UserInputError, match="relative"):
        half.limit({})
    assert Budget("macs", 0.5, relative=True).describe() == "macs=50%"
