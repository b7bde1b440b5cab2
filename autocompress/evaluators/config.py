"""``EvaluatorConfig``: every setting that changes what an evaluation returns, frozen and hashed."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from autocompress.errors import UserInputError

LATENCY_MODES: tuple[str, ...] = ("none", "predicted", "measured")
LATENCY_BACKENDS: tuple[str, ...] = ("torch", "ort", "ort-int8", "torch-cuda")
#: Backends that time on a GPU (CUDA events) rather than on this machine's CPU.
GPU_LATENCY_BACKENDS: tuple[str, ...] = ("torch-cuda",)
LATENCY_CLOCKS: tuple[str, ...] = ("wall", "cpu")


@dataclass(frozen=True)
class EvaluatorConfig:
    """Settings of ``CompressionEvaluator`` (validated on construction).

    Args:
        val_samples: validation samples scored at full fidelity (None: the whole split).
        low_fidelity_val_samples: validation samples scored at low fidelity (no fine-tune either).
        reconstruct: least-squares refit of layers whose input channels were pruned, from the
            calibration activations (He et al. 2017 / AMC). Without it, pruned candidates of a
            trained network score near chance and the proxy cannot rank them (resnet20 on digits:
            about 0.11 plain vs 0.95-0.99 refit at 27-55% of the MACs; ``bench_reconstruct.py``).
        bn_recalib: re-estimate BatchNorm statistics of pruned / factorised candidates (adaptive BN).
        recalib_batches: calibration batches forwarded for the re-estimate.
        recalib_batch_size: samples per calibration batch.
        finetune_steps: SGD steps of knowledge-distillation fine-tuning at full fidelity (0: none;
            the uncompressed identity policy is never fine-tuned).
        kd_alpha: weight of the distillation term (1 - alpha weighs cross-entropy).
        kd_temperature: softmax temperature T of the distillation term.
        finetune_lr: learning rate of the fine-tune (SGD, momentum 0.9).
        finetune_batch_size: samples per fine-tune step.
        latency: ``none``, ``predicted`` (per-layer lookup table) or ``measured`` (timed each time).
        latency_backend: ``torch`` (eager), ``ort`` (ONNX Runtime fp32), ``ort-int8``, or
            ``torch-cuda`` (eager fp32 on the CUDA device, timed with CUDA events).
        latency_batch: batch size at which latency is reported.
        latency_threads: intra-op threads used while timing.
        latency_clock: ``wall`` (elapsed) or ``cpu`` (CPU time of the single inference thread:
            what an idle core would give, robust on a shared machine; needs latency_threads=1).
        batch_size: evaluation batch size (does not change the scores).
        seed: seed of the validation subset and fine-tune batch order.
    """

    val_samples: int | None = None
    low_fidelity_val_samples: int = 128
    reconstruct: bool = True
    bn_recalib: bool = True
    recalib_batches: int = 8
    recalib_batch_size: int = 32
    finetune_steps: int = 0
    kd_alpha: float = 0.9
    kd_temperature: float = 4.0
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 64
    latency: str = "predicted"
    latency_backend: str = "ort"
    latency_batch: int = 1
    latency_threads: int = 1
    latency_clock: str = "wall"
    batch_size: int = 256
    seed: int = 0

    schema_version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        def positive_int(name: str, allow_zero: bool = False, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            lo = 0 if allow_zero else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                what = "an integer >= 0" if allow_zero else "an integer >= 1"
                raise UserInputError(f"EvaluatorConfig.{name}={v!r} is not allowed; expected {what}"
                                     + (" or None" if allow_none else ""))

        positive_int("val_samples", allow_none=True)
        for name in ("low_fidelity_val_samples", "recalib_batches", "recalib_batch_size",
                     "finetune_batch_size", "latency_batch", "latency_threads", "batch_size"):
            positive_int(name)
        positive_int("finetune_steps", allow_zero=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UserInputError(f"EvaluatorConfig.seed={self.seed!r} is not an integer")
        if not isinstance(self.reconstruct, bool):
            raise UserInputError(f"EvaluatorConfig.reconstruct={self.reconstruct!r}; expected true or false")
        if not isinstance(self.bn_recalib, bool):
            raise UserInputError(f"EvaluatorConfig.bn_recalib={self.bn_recalib!r}; expected true or false")
        if not (_is_num(self.kd_alpha) and 0.0 <= self.kd_alpha <= 1.0):
            raise UserInputError(f"EvaluatorConfig.kd_alpha={self.kd_alpha!r}; allowed: 0 <= kd_alpha <= 1")
        if not (_is_num(self.kd_temperature) and self.kd_temperature > 0):
            raise UserInputError(f"EvaluatorConfig.kd_temperature={self.kd_temperature!r}; allowed: > 0")
        if not (_is_num(self.finetune_lr) and self.finetune_lr > 0):
            raise UserInputError(f"EvaluatorConfig.finetune_lr={self.finetune_lr!r}; allowed: > 0")
        if self.latency not in LATENCY_MODES:
            raise UserInputError(
                f"EvaluatorConfig.latency={self.latency!r}; allowed: {', '.join(LATENCY_MODES)}"
            )
        if self.latency_backend not in LATENCY_BACKENDS:
            raise UserInputError(
                f"EvaluatorConfig.latency_backend={self.latency_backend!r}; "
                f"allowed: {', '.join(LATENCY_BACKENDS)}"
            )
        if self.latency_clock not in LATENCY_CLOCKS:
            raise UserInputError(
                f"EvaluatorConfig.latency_clock={self.latency_clock!r}; "
                f"allowed: {', '.join(LATENCY_CLOCKS)}"
            )
        if self.latency_clock == "cpu" and self.latency_backend in GPU_LATENCY_BACKENDS:
            raise UserInputError(
                f"EvaluatorConfig.latency_clock='cpu' cannot time latency_backend="
                f"{self.latency_backend!r} (it is timed with CUDA events); allowed: latency_clock=wall"
            )
        if self.latency_clock == "cpu" and self.latency_threads != 1:
            raise UserInputError(
                f"EvaluatorConfig.latency_clock='cpu' needs latency_threads=1 "
                f"(got {self.latency_threads})"
            )
        for name in ("kd_alpha", "kd_temperature", "finetune_lr"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every setting."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluatorConfig:
        """Build from a dict; unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserInputError(
                f"unknown evaluator setting {unknown[0]!r}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**d)

    def key(self) -> str:
        """Stable sha256 of the settings that can change a result (not ``batch_size``)."""
        d = self.to_dict()
        d.pop("batch_size")
        blob = json.dumps({"v": self.schema_version, **d}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def check_backend_available(backend: str) -> str:
    """The backend if this machine can time on it: ``torch-cuda`` needs a CUDA device."""
    if backend in GPU_LATENCY_BACKENDS:
        from autocompress.devices import cuda_available

        if not cuda_available():
            allowed = ", ".join(b for b in LATENCY_BACKENDS if b not in GPU_LATENCY_BACKENDS)
            raise UserInputError(f"latency backend {backend!r} needs CUDA, which this machine does "
                                 f"not have (torch.cuda.is_available() is False); allowed here: {allowed}")
    return backend


def _is_num(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
