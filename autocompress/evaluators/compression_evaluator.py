"""``CompressionEvaluator``: compress a policy for real, recalibrate, (fine-tune), score, time, cache."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from autocompress.compression.knobs import KNOB_TYPES
from autocompress.compression.policy import CompressionPolicy
from autocompress.devices import device_tag
from autocompress.errors import UserInputError
from autocompress.evaluators.accuracy import (
    has_batchnorm,
    kd_finetune,
    recalibrate_bn,
    topk_correct,
)
from autocompress.evaluators.base import (
    METRICS,
    BaseEvaluator,
    Direction,
    EvalResult,
    check_fidelity,
    register_evaluator,
)
from autocompress.evaluators.cache import (
    EvalCache,
    cache_key,
    class_fingerprint,
    model_fingerprint,
    tensors_fingerprint,
)
from autocompress.evaluators.config import GPU_LATENCY_BACKENDS, EvaluatorConfig
from autocompress.evaluators.latency import latency_device, measure_latency
from autocompress.metrics import PREDICTED_METRICS, predicted_costs

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace
    from autocompress.data import DataSplits
    from autocompress.evaluators.lut import LatencyLUT

#: The costs the space predicts (``autocompress.metrics.PREDICTED_METRICS``).
COST_METRICS: tuple[str, ...] = PREDICTED_METRICS


def structural_policy(policy: CompressionPolicy) -> CompressionPolicy:
    """The policy with every bit-width back at 32: what latency is timed on.

    CPUs have no kernels below 8 bits, and fake-quantisation ops would only slow a float model
    down, so latency reflects pruning and factorisation; ``ort-int8`` runs the whole network in
    int8 whatever the policy's bit-widths.
    """
    return CompressionPolicy({n: a.replace(w_bits=32, a_bits=32) for n, a in policy.layers.items()})


def changes_structure(policy: CompressionPolicy) -> bool:
    """True when the policy prunes, factorises or sparsifies somewhere (BatchNorm statistics go
    stale): some knob whose type declares ``restats`` is off its identity value."""
    stale = [(k, kt.identity) for k, kt in KNOB_TYPES.items() if kt.restats]
    return any(getattr(a, k) != ident for a in policy.layers.values() for k, ident in stale)


def cost_metrics(space: CompressionSpace, policy: CompressionPolicy) -> dict[str, float]:
    """MACs, FLOPs, params, size and BOPs of a policy from the space's cost model.

    The space's predictions equal what is counted on the compressed model (checked by the
    compression core's tests), and they are orders of magnitude cheaper than counting.
    """
    return predicted_costs({
        "macs": space.macs(policy), "params": space.params(policy),
        "size_bytes": space.size_bytes(policy), "bops": space.bops(policy),
    })


class _PhaseTimer:
    """Accumulates seconds per phase; ``phase`` names the one running if it raises."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.phase = "setup"
        self._t = 0.0

    def start(self, phase: str) -> None:
        self.phase = phase
        self._t = time.perf_counter()

    def stop(self) -> None:
        self.timings[self.phase] = self.timings.get(self.phase, 0.0) + time.perf_counter() - self._t


@register_evaluator("compression")
class CompressionEvaluator(BaseEvaluator):
    """Scores a policy on the *really* compressed model: accuracy proxy, costs and latency.

    Per candidate: compress (``autocompress.compression.compress``), re-estimate BatchNorm
    statistics when the policy prunes or factorises, fine-tune ``finetune_steps`` steps with
    distillation from the base model (full fidelity only), score top-1 (and top-5 with more than 5
    classes) on a fixed, seeded validation subset, then add the space's costs and the latency
    (predicted from a per-layer lookup table, or measured). Results are cached on disk.

    Args:
        model: the trained base model (left untouched).
        space: its ``CompressionSpace``.
        data: the data splits (``calib`` for recalibration, ``train`` for fine-tuning, ``val``
            for scoring).
        config: evaluator settings.
        example_input: one input sample ``(1, ...)``; default: the first calibration sample.
        data_source: where the data comes from (name and resolved path), part of the cache key
            with a digest of the samples themselves; default ``data.name``.
        cache: on-disk result cache (None: no caching).
        lut: latency lookup table; built (and cached under ``lut_dir``) on first use when
            ``config.latency == "predicted"`` and none is given.
        lut_dir: where lookup tables are cached (default: ``cache_dir()/lut``).
        progress: show a progress bar while building a lookup table.
        device: where recalibration, the fine-tune and scoring run (``autocompress.devices``);
            the base model stays on the CPU, where candidates are compressed (pruning surgery and
            the least-squares refit, so a candidate's structure and weights are the same on every
            device), and each compressed model is then moved to the device. Scores are fp32.

    Example:
        >>> ev = CompressionEvaluator(model, space, data, EvaluatorConfig(latency="none"))  # doctest: +SKIP
        >>> ev.evaluate(space.uniform(prune=0.5)).metrics["acc"]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        space: CompressionSpace,
        data: DataSplits,
        config: EvaluatorConfig | None = None,
        *,
        example_input: Tensor | None = None,
        cache: EvalCache | None = None,
        lut: LatencyLUT | None = None,
        lut_dir: str | Path | None = None,
        progress: bool = False,
        data_source: str | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        config = EvaluatorConfig() if config is None else config
        if not isinstance(config, EvaluatorConfig):
            raise UserInputError(f"config must be an EvaluatorConfig, got {type(config).__name__}")
        self.model = model.eval()
        self.space = space
        self.data = data
        self.config = config
        self.cache = cache
        self.lut = lut
        self.lut_dir = Path(lut_dir) if lut_dir is not None else None
        self.progress = progress
        self.num_classes = int(data.num_classes)
        self.data_source = str(data.name) if data_source is None else str(data_source)

        x_val, y_val = data.tensors("val")
        perm = torch.randperm(len(y_val), generator=torch.Generator().manual_seed(config.seed))
        n_full = len(perm) if config.val_samples is None else min(config.val_samples, len(perm))
        self._x_val, self._y_val = x_val[perm[:n_full]], y_val[perm[:n_full]]
        self._n_low = min(config.low_fidelity_val_samples, n_full)

        x_cal, y_cal = data.tensors("calib")
        self._calib_raw = (x_cal, y_cal)
        if len(x_cal) == 0:
            raise UserInputError("the calibration split is empty; raise calib_size")
        need = config.recalib_batches * config.recalib_batch_size
        reps = math.ceil(need / len(x_cal))
        x_cal = torch.cat([x_cal] * reps)[:need]
        self._calib = list(x_cal.split(config.recalib_batch_size))
        self.example_input = (x_cal[:1].clone() if example_input is None else example_input)
        self._train: tuple[Tensor, Tensor] | None = None
        self._fingerprint: str | None = None
        self._data_fp: str | None = None
        self._space_fp: str | None = None
        self._settings_fp: str | None = None
        self._base: EvalResult | None = None
        self._lut_error: str | None = None
        self.n_computed = 0  # candidates actually evaluated (cache hits excluded)
        self._device = torch.device(device)
        self._teacher: nn.Module | None = None  # the base model on the device (fine-tune teacher)

        ks = (1, 5) if self.num_classes > 5 else (1,)
        self._ks = ks
        names = ["acc"] + (["acc_top5"] if 5 in ks else []) + list(COST_METRICS)
        if config.latency != "none":
            names.append("latency_ms")
        self.metrics: dict[str, Direction] = {n: METRICS[n] for n in names}

    # -- device -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where compressed models are recalibrated, fine-tuned and scored."""
        return self._device

    @device.setter
    def device(self, device: torch.device | str) -> None:
        self._device = torch.device(device)
        self._teacher = None
        self._settings_fp = None

    def teacher(self) -> nn.Module:
        """The base model on the evaluator's device (itself on the CPU; one copy otherwise)."""
        if self._device.type == "cpu":
            return self.model
        if self._teacher is None:
            import copy

            self._teacher = copy.deepcopy(self.model).to(self._device).eval()
        return self._teacher

    def __getstate__(self) -> dict[str, Any]:
        # The device copy of the base model is rebuilt where the evaluator is unpickled.
        state = dict(self.__dict__)
        state["_teacher"] = None
        return state

    # -- helpers ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 of the base model's weights and code (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @property
    def data_fingerprint(self) -> str:
        """sha256 of the data's source, class count and the samples this evaluator uses (once).

        The samples are the scored validation subset (inputs and labels), the calibration split
        and, when candidates are fine-tuned, the training split: two data sets that a model of the
        same shape accepts never share cached results.
        """
        if self._data_fp is None:
            parts = [self._x_val, self._y_val, *self._calib_raw]
            if self.config.finetune_steps > 0:
                parts.extend(self._train_tensors())
            digest = tensors_fingerprint(parts)
            self._data_fp = hashlib.sha256(
                f"{self.data_source}|{self.num_classes}|{digest}".encode()
            ).hexdigest()
        return self._data_fp

    @property
    def space_fingerprint(self) -> str:
        """sha256 of the space settings that change the compressed model (rounding, importance, ...)."""
        if self._space_fp is None:
            s = self.space
            blob = json.dumps({
                "round_to": s.round_to, "importance": s.importance, "knobs": list(s.knob_types),
                "max_prune": s.max_prune, "bits": list(s.bits),
                "points": [[p.name, sorted(p.knobs)] for p in s.decision_points],
            }, sort_keys=True)
            inputs = s.example_input if isinstance(s.example_input, tuple) else (s.example_input,)
            ex = tensors_fingerprint(t for t in (*inputs, self.example_input) if isinstance(t, Tensor))
            self._space_fp = hashlib.sha256(f"{blob}|{ex}".encode()).hexdigest()
        return self._space_fp

    def key(self, policy: CompressionPolicy, fidelity: str = "full") -> str:
        """Cache key of (base model and its code, data, space, policy, settings, fidelity)."""
        return cache_key(self.fingerprint, policy.key(), self._settings_key(),
                         check_fidelity(fidelity), data_fp=self.data_fingerprint,
                         space_fp=self.space_fingerprint)

    def _settings_key(self) -> str:
        # A subclass (an overridden compress or score) computes other results: its code counts.
        # The built-in class's own code is covered by the cache's logic fingerprint.
        # Latency is the machine's: a cache shared between machines keeps theirs apart.
        # The device is part of the key except for the CPU (whose results keep their keys): a
        # GPU's kernels round differently, and its fine-tune runs in bf16, so a CUDA result is
        # served only to an evaluation on the same kind of GPU, never to a CPU one (or back).
        if self._settings_fp is None:
            code = "" if type(self) is CompressionEvaluator else class_fingerprint(type(self))
            machine = ""
            if self.config.latency != "none":
                from autocompress.evaluators.lut import machine_id

                ident = machine_id()
                if self.config.latency_backend in GPU_LATENCY_BACKENDS:
                    from autocompress.evaluators.lut import gpu_name

                    ident["gpu"] = gpu_name()
                machine = json.dumps(ident, sort_keys=True)
            self._settings_fp = f"{self.config.key()}|{code}|{machine}"
            tag = device_tag(self._device)
            if tag:
                self._settings_fp += f"|{tag}"
        return self._settings_fp

    @property
    def calib_batches(self) -> list[Tensor]:
        """The calibration batches used for recalibration and activation ranges."""
        return self._calib

    def _train_tensors(self) -> tuple[Tensor, Tensor]:
        if self._train is None:
            self._train = self.data.tensors("train")
        return self._train

    def latency_info(self) -> dict[str, Any]:
        """How ``latency_ms`` is obtained (empty when latency is off)."""
        c = self.config
        if c.latency == "none":
            return {}
        return {"backend": c.latency_backend, "batch": c.latency_batch,
                "threads": c.latency_threads, "kind": c.latency, "clock": c.latency_clock}

    def get_lut(self) -> LatencyLUT:
        """The lookup table, loaded from disk or built on first use.

        A build that failed is not retried for every candidate: the same error is raised again.
        """
        if self.lut is None:
            from autocompress.evaluators.lut import LatencyLUT

            if self._lut_error is not None:
                raise RuntimeError(f"the latency lookup table could not be built: {self._lut_error}")
            c = self.config
            try:
                self.lut = LatencyLUT.build(
                    self.model, self.space, self.example_input, backend=c.latency_backend,
                    batch=c.latency_batch, threads=c.latency_threads, cache_dir=self.lut_dir,
                    progress=self.progress, clock=c.latency_clock,
                )
            except Exception as exc:
                self._lut_error = f"{type(exc).__name__}: {exc}"
                raise
        return self.lut

    def needs_recalibration(self, policy: CompressionPolicy, small: nn.Module) -> bool:
        """Whether BatchNorm statistics of ``small`` are re-estimated before scoring.

        Pruned or factorised models with BatchNorm are recalibrated (adaptive BN), except when
        least-squares reconstruction refitted the pruned layers: the refit reproduces the original
        outputs under the stored statistics, and re-estimating them then hurts (resnet20 on digits,
        8 random policies: mean top-1 0.970 refit alone vs 0.917 refit + recalibration).
        """
        c = self.config
        if not (c.bn_recalib and changes_structure(policy) and has_batchnorm(small)):
            return False
        prunes = any(a.prune > 0 for a in policy.layers.values())
        return not (c.reconstruct and prunes)

    def compress(self, policy: CompressionPolicy) -> nn.Module:
        """The compressed model of ``policy`` on the evaluator's device (no recalibration, no
        fine-tune); compression itself runs on the CPU."""
        from autocompress.compression import compress

        small = compress(self.model, policy, space=self.space, calib=self._calib,
                         example_input=self.example_input, reconstruct=self.config.reconstruct)
        return small if self._device.type == "cpu" else small.to(self._device)

    def score(self, model: nn.Module, fidelity: str = "full") -> dict[int, float]:
        """Top-k accuracies (``{1: top1, 5: top5}``) of ``model`` on the fidelity's val subset."""
        n = self._n_low if check_fidelity(fidelity) == "low" else len(self._y_val)
        return topk_correct(model, self._x_val[:n], self._y_val[:n], ks=self._ks,
                            batch_size=self.config.batch_size)

    def finetune(self, model: nn.Module, steps: int) -> float:
        """KD fine-tune ``model`` in place for ``steps`` steps (teacher: the base model)."""
        c = self.config
        x_tr, y_tr = self._train_tensors()
        return kd_finetune(model, self.teacher(), x_tr, y_tr, steps=steps,
                           batch_size=c.finetune_batch_size, lr=c.finetune_lr, alpha=c.kd_alpha,
                           temperature=c.kd_temperature, seed=c.seed)

    # -- the evaluation ---------------------------------------------------------------------
    def evaluate(self, policy: CompressionPolicy, fidelity: str = "full") -> EvalResult:
        """Score ``policy`` at ``fidelity``; a failing candidate returns ``status="failed"``."""
        check_fidelity(fidelity)
        t_start = time.perf_counter()
        key = self.key(policy, fidelity) if self.cache is not None else None
        if self.cache is not None and key is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        result = self._compute(policy, fidelity, t_start)
        if self.cache is not None and key is not None:
            self.cache.put(key, result)
        return result

    def _compute(self, policy: CompressionPolicy, fidelity: str, t_start: float) -> EvalResult:
        self.n_computed += 1
        c = self.config
        timer = _PhaseTimer()
        metrics: dict[str, float] = {}
        latency_info = self.latency_info()
        try:
            timer.start("bookkeeping")
            self.space.validate(policy)
            metrics.update(cost_metrics(self.space, policy))
            timer.stop()

            timer.start("compress")
            small = self.compress(policy)
            timer.stop()

            if self.needs_recalibration(policy, small):
                timer.start("recalibrate")
                recalibrate_bn(small, self._calib)
                timer.stop()

            compressed = any(not a.is_identity for a in policy.layers.values())
            if fidelity == "full" and c.finetune_steps > 0 and compressed:
                timer.start("finetune")
                self.finetune(small, c.finetune_steps)
                timer.stop()

            timer.start("evaluate")
            accs = self.score(small, fidelity)
            timer.stop()
            metrics["acc"] = accs[1]
            if 5 in accs:
                metrics["acc_top5"] = accs[5]
            if not math.isfinite(metrics["acc"]):
                raise FloatingPointError("the compressed model produced non-finite outputs")

            if c.latency == "predicted":
                timer.start("latency")
                metrics["latency_ms"] = float(self.get_lut().predict(policy))
                timer.stop()
            elif c.latency == "measured":
                timer.start("latency")
                timed = small if all(
                    a.w_bits == 32 and a.a_bits == 32 for a in policy.layers.values()
                ) else self.compress(structural_policy(policy))
                # ONNX Runtime and the CPU eager backend time a CPU model; torch-cuda a GPU one.
                timed = timed.to(latency_device(c.latency_backend, self._device))
                stats = measure_latency(
                    timed, self.example_input, backend=c.latency_backend, batch=c.latency_batch,
                    threads=c.latency_threads, calib=self._calib[:2], clock=c.latency_clock,
                )
                metrics["latency_ms"] = stats.median_ms
                latency_info = {**latency_info, "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms,
                                "spread": stats.spread}
                timer.stop()
        except UserInputError as exc:
            # A policy that does not fit this space is a bad candidate, not a crash.
            return self._failed(f"invalid policy: {exc}", fidelity, metrics, timer, t_start,
                                latency_info)
        except Exception as exc:  # noqa: BLE001 - any failure of one candidate is recorded
            return self._failed(f"{timer.phase} failed: {type(exc).__name__}: {exc}", fidelity,
                                metrics, timer, t_start, latency_info)
        return EvalResult(metrics=metrics, latency_info=latency_info,
                          timings=self._finish(timer, t_start), fidelity=fidelity)

    @staticmethod
    def _finish(timer: _PhaseTimer, t_start: float) -> dict[str, float]:
        timings = dict(timer.timings)
        total = time.perf_counter() - t_start
        measured = sum(v for k, v in timings.items() if k != "bookkeeping")
        timings["bookkeeping"] = max(total - measured, 0.0)
        timings["total"] = total
        return timings

    def _failed(self, error: str, fidelity: str, metrics: dict[str, float], timer: _PhaseTimer,
                t_start: float, latency_info: dict[str, Any]) -> EvalResult:
        return EvalResult.failure(error, fidelity=fidelity, metrics=metrics,
                                  timings=self._finish(timer, t_start), latency_info=latency_info)

    def base_result(self) -> EvalResult:
        """The identity policy's result at full fidelity (the uncompressed baseline), memoised."""
        if self._base is None:
            self._base = self.evaluate(self.space.identity(), "full")
        return self._base

    def __repr__(self) -> str:
        return (f"CompressionEvaluator({type(self.model).__name__}, {len(self._y_val)} val samples, "
                f"latency={self.config.latency})")
