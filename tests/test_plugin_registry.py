"""The one registry type behind strategies, agents and evaluators."""

from __future__ import annotations

import sys
import types

import pytest

from autocompress.errors import UserInputError
from autocompress.registry import Registry


class Base:
    name = ""


def test_register_list_lookup_and_one_line_errors() -> None:
    reg: Registry[type[Base]] = Registry("widget", Base)

    @reg.register("b")
    class B(Base):
        pass

    @reg.register("a2")
    class A2(Base):
        pass

    assert reg.names() == ["a2", "b"] and reg.names("a*") == ["a2"]
    assert reg.lookup("b") is B and B.name == "b"
    with pytest.raises(UserInputError, match=r"^unknown widget 'c'; allowed: a2, b$"):
        reg.lookup("c")
    with pytest.raises(ValueError, match="widget 'b' is already registered"):
        reg.register("b")(type("Other", (Base,), {}))
    with pytest.raises(TypeError, match="widget 'x' must subclass Base"):
        reg.register("x")(int)  # type: ignore[arg-type]
    assert "x" not in reg


def test_a_lazy_entry_point_is_imported_on_first_lookup_only(monkeypatch: pytest.MonkeyPatch) -> None:
    reg: Registry[type[Base]] = Registry("widget", Base, set_name=False)
    reg.register("lazy", "fake_widgets_mod:Lazy")
    assert reg["lazy"] == "fake_widgets_mod:Lazy"  # not imported yet
    mod = types.ModuleType("fake_widgets_mod")

    class Lazy(Base):
        pass

    Lazy.__module__, Lazy.__qualname__ = "fake_widgets_mod", "Lazy"
    mod.Lazy = Lazy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_widgets_mod", mod)
    assert reg.register("lazy")(Lazy) is Lazy  # the module's own decorator: the same class is fine
    assert reg.lookup("lazy") is Lazy and Lazy.name == ""  # set_name=False leaves it alone
    with pytest.raises(ValueError, match="already registered"):
        reg.register("lazy", "elsewhere:Other")
