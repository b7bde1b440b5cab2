"""Which torch device a command runs on: the ``--device`` value, its availability, and precision.

``auto`` is CUDA when this process sees a GPU, else the CPU. A value is checked in two steps: its
form (:func:`check_device_name`, what a stored spec must pass on any machine) and whether this
machine has it (:func:`resolve_device`, before anything is built).

Precision: training and fine-tuning on CUDA run under bf16 autocast when the GPU supports it
(:func:`train_autocast`); every accuracy figure (validation scores, BatchNorm recalibration) is
computed in fp32 with TF32 off (:func:`fp32_semantics`), so a score means the same on every device.
On the CPU nothing changes: no autocast, the same code path as without a device.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator

import torch

from autocompress.errors import UserInputError

#: What ``--device`` accepts.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"
_FORM = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(value: object, what: str = "--device") -> str:
    """The device value if its form is allowed (availability is not checked here)."""
    if not isinstance(value, str) or not _FORM.fullmatch(value):
        raise UserInputError(f"{what} {value!r} is not allowed; allowed: {DEVICE_CHOICES}")
    return value


def cuda_available() -> bool:
    """True when this process sees at least one CUDA device."""
    return bool(torch.cuda.is_available())


def resolve_device(value: str | torch.device = "auto", what: str = "--device") -> torch.device:
    """The ``torch.device`` a value names on this machine; bad or unavailable values raise.

    ``cuda`` without an index means the current CUDA device (``torch.cuda.current_device()``).
    """
    if isinstance(value, torch.device):
        value = str(value)
    check_device_name(value, what)
    if value == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if cuda_available() else torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    if not cuda_available():
        raise UserInputError(f"{what} {value!r} needs CUDA, which this machine does not have "
                             "(torch.cuda.is_available() is False); allowed here: auto, cpu")
    count = torch.cuda.device_count()
    index = int(value.split(":", 1)[1]) if ":" in value else torch.cuda.current_device()
    if index >= count:
        raise UserInputError(f"{what} {value!r}: this machine has {count} CUDA device(s); "
                             f"allowed: cuda:0 .. cuda:{count - 1}")
    return torch.device("cuda", index)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a module without any."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def device_tag(device: torch.device) -> str:
    """What an evaluation's result depends on about its device: empty for the CPU (so cached CPU
    results keep their keys), the GPU's name for CUDA (kernels, and so low bits, differ by GPU)."""
    if device.type == "cpu":
        return ""
    return f"{device.type}|{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype used for training on ``device``: bf16 on a CUDA GPU that has it, else
    None (fp32). fp16 is not used: it needs loss scaling, bf16 has fp32's range."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def train_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Mixed precision for a training step on ``device`` (a no-op on the CPU)."""
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def fp32_semantics(device: torch.device) -> Iterator[None]:
    """Full fp32 matmuls and convolutions (TF32 off) while scoring on a CUDA device."""
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


__all__ = [
    "DEVICE_CHOICES",
    "amp_dtype",
    "check_device_name",
    "cuda_available",
    "device_tag",
    "fp32_semantics",
    "model_device",
    "resolve_device",
    "train_autocast",
]
