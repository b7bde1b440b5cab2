"""Model registry: named factories, torchvision models by prefix, and user factories."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autocompress.errors import UserInputError, check_checkpoint_path

InputShape = tuple[int, ...]


@dataclass(frozen=True)
class ModelEntry:
    """A registered factory with the input shape its architecture expects (C, H, W)."""

    name: str
    factory: Callable[..., nn.Module]
    input_shape: InputShape
    description: str


_MODELS: dict[str, ModelEntry] = {}
TORCHVISION_PREFIX = "tv:"


def register_model(
    name: str, *, input_shape: InputShape, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name``; registering a name twice raises."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _MODELS[name] = ModelEntry(name, fn, tuple(input_shape), doc)
        return fn

    return deco


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_models(pattern: str = "*", *, torchvision: bool = False) -> list[str]:
    """Names of registered models matching a glob; ``torchvision=True`` adds ``tv:*`` names."""
    names = sorted(_MODELS)
    if torchvision:
        names += [TORCHVISION_PREFIX + n for n in _torchvision_names()]
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def model_entry(name: str) -> ModelEntry:
    """The registry entry of a built-in model; unknown names list the valid ones."""
    if name not in _MODELS:
        raise UserInputError(
            f"unknown model {name!r}; built-in models are: {', '.join(sorted(_MODELS))}; "
            f"also 'tv:<torchvision name>' (see `autocompress models --torchvision`) "
            f"or 'package.module:factory'"
        )
    return _MODELS[name]


def default_input_shape(name: str, model: nn.Module | None = None) -> InputShape:
    """The (C, H, W) input a model expects: registry entry, model attribute, or ImageNet."""
    if model is not None and getattr(model, "input_shape", None) is not None:
        return tuple(model.input_shape)
    if name in _MODELS:
        return _MODELS[name].input_shape
    return (3, 224, 224)


def _create_torchvision(name: str, num_classes: int, **kw: object) -> nn.Module:
    import torchvision.models as tvm

    valid = _torchvision_names()
    if name not in valid:
        raise UserInputError(
            f"unknown torchvision model {name!r}; valid names include: {', '.join(valid[:12])}, "
            f"... ({len(valid)} in all, see `autocompress models --torchvision`)"
        )
    kw.setdefault("weights", None)  # random init: nothing is ever downloaded
    if name.startswith("inception") or name == "googlenet":
        kw.setdefault("aux_logits", False)
        kw.setdefault("init_weights", True)
    model = tvm.get_model(name, num_classes=num_classes, **kw)
    return model


def _user_factory(spec: str) -> Callable[..., nn.Module]:
    """Resolve ``package.module:factory`` to something that may be called to build a model.

    Importing the module is the documented way to bring one's own model, so it stays; but only a
    Python function or an ``nn.Module`` subclass is ever called, and only with ``num_classes`` and
    the registry's own keyword arguments. Builtins (``os:system``), other classes
    (``json:JSONDecoder``) and callables whose required arguments we cannot supply are refused
    without being called.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in (*module_name.split("."), attr)):
        raise UserInputError(f"model {spec!r} is not of the form 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - an ImportError, or the module itself failing
        line = " ".join(str(exc).split())[:200]
        raise UserInputError(
            f"cannot import module {module_name!r} for model {spec!r}: {type(exc).__name__}: {line}; "
            "a user model is given as 'package.module:factory' importable from PYTHONPATH"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserInputError(f"module {module_name!r} has no callable {attr!r} (model {spec!r})")
    if inspect.isclass(factory):
        if not issubclass(factory, nn.Module):
            raise UserInputError(
                f"model {spec!r} is the class {factory.__qualname__}, not an nn.Module subclass; "
                "a model factory must be an nn.Module class or a function returning an nn.Module"
            )
    elif not (inspect.isfunction(factory) or inspect.ismethod(factory)
              or isinstance(factory, functools.partial)):
        raise UserInputError(
            f"model {spec!r} is a {type(factory).__name__}, not a Python function or nn.Module "
            "class; a model factory must return an nn.Module"
        )
    return factory


def _factory_kwargs(factory: Callable[..., nn.Module], spec: str, num_classes: int,
                    kw: dict[str, object]) -> dict[str, object]:
    """The keyword arguments the factory takes: ``num_classes`` if it accepts it, plus ``kw``."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        raise UserInputError(f"model factory {spec!r} has no inspectable signature") from None
    params = sig.parameters.values()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    call = dict(kw)
    if takes_any or "num_classes" in sig.parameters:
        call["num_classes"] = num_classes
    try:
        sig.bind(**call)
    except TypeError as exc:
        raise UserInputError(
            f"model factory {spec!r} cannot be called with {sorted(call) or 'no arguments'}: {exc}; "
            "it must build a model from keyword arguments only (num_classes optional)"
        ) from None
    return call


def _create_user(spec: str, num_classes: int, **kw: object) -> nn.Module:
    factory = _user_factory(spec)
    call = _factory_kwargs(factory, spec, num_classes, kw)
    try:
        model = factory(**call)
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: one line naming it
        line = " ".join(str(exc).split())[:200]
        raise UserInputError(f"model factory {spec!r} failed: {type(exc).__name__}: {line}") from None
    if not isinstance(model, nn.Module):
        raise UserInputError(
            f"model factory {spec!r} returned a {type(model).__name__}, not an nn.Module"
        )
    return model


def create_model(name: str, num_classes: int = 10, **kw: object) -> nn.Module:
    """Build a model by name.

    Args:
        name: a built-in name (``resnet20``), ``tv:<torchvision name>`` (random init), or
            ``package.module:factory`` for a user model.
        num_classes: size of the classifier output.
        **kw: passed to the factory (e.g. ``width_mult`` for ``mobilenetv2``).

    Returns:
        A freshly initialised ``nn.Module`` with an ``input_shape`` attribute (C, H, W).

    Example:
        >>> m = create_model("resnet20", num_classes=10)
    """
    if name.startswith(TORCHVISION_PREFIX):
        model = _create_torchvision(name[len(TORCHVISION_PREFIX) :], num_classes, **kw)
    elif ":" in name:
        model = _create_user(name, num_classes, **kw)
    else:
        model = model_entry(name).factory(num_classes=num_classes, **kw)
    if getattr(model, "input_shape", None) is None:
        model.input_shape = default_input_shape(name)
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a ``state_dict`` (``weights_only=True``) into ``model``, or a TorchScript file.

    A mismatch raises one clear error naming the first mismatching key and shapes.
    """
    path = check_checkpoint_path(path)
    # torch warns about its own deprecations (torch.jit.load) and pickle details while trying the
    # formats; the user gets the one line below, not those.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - fall back to TorchScript below
            try:
                scripted = torch.jit.load(str(path), map_location="cpu")
            except Exception:
                raise UserInputError(
                    f"cannot read checkpoint {str(path)!r}: not a state_dict saved by torch.save "
                    "nor a TorchScript file (nothing in it is executed: weights only)"
                ) from None
            state = scripted.state_dict()
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserInputError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a state_dict")
    own = model.state_dict()
    for key, value in own.items():
        if key in state and not isinstance(state[key], torch.Tensor):
            raise UserInputError(
                f"checkpoint {str(path)!r} does not fit the model: key {key!r} holds a "
                f"{type(state[key]).__name__}, not a tensor"
            )
        if key not in state:
            raise UserInputError(
                f"checkpoint {str(path)!r} does not fit the model: missing key {key!r} "
                f"(model shape {tuple(value.shape)})"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserInputError(
                f"checkpoint {str(path)!r} does not fit the model: key {key!r} has shape "
                f"{tuple(state[key].shape)} in the checkpoint, {tuple(value.shape)} in the model"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise UserInputError(
            f"checkpoint {str(path)!r} does not fit the model: unexpected key {extra[0]!r}"
        )
    model.load_state_dict(state)
    return model
