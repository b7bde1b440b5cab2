"""Predicted latency: a NetAdapt-style per-layer lookup table, profiled once and cached on disk.

Every compute layer (conv / linear, with the BatchNorm and activation module that follow it) of
the base model is rebuilt as a standalone module at its input shape and timed on a grid of input
and output widths (keep fractions set by the decision points that prune them) and, for layers the
policy may factorise, on a grid of ranks for its two factors. A recurrent module (``nn.LSTM`` /
``nn.GRU`` / ``nn.RNN``) is one entry over its steps, on a grid of input widths and hidden sizes
and, when factorised (its steps then run unrolled, not as one fused node), on a grid of rank
fractions at the extreme widths. A prediction interpolates each
layer's entry at the widths a policy gives it, sums the entries and adds a constant measured once:
the whole model's latency minus the sum of its layers' entries (what the table does not see:
call overhead, adds, pooling, reshapes).

Which decision point changes which layer's widths, and by how many channels at each ratio of the
grid, is read from the compression space (``CompressionSpace.channels_removed``: the coefficients it
probed, the numbers ``compress`` prunes to), so widths are exact at the grid ratios (``round_to``
included) and interpolated linearly in between. The constant (and a scale) are fitted robustly on a few random
compressed models measured whole, which absorbs what standalone layers see differently from the
same layers inside the graph.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from autocompress.errors import UserInputError
from autocompress.evaluators._lut_layers import (
    _Layer,
    _removed,
    _width_sources,
    discover_layers,
)
from autocompress.evaluators._lut_plan import _interp2, _interp3, _plan, _theil_sen
from autocompress.evaluators._standalone import (
    _Profiler,
    _rnn_factorised,
    build_standalone,
    standalone_onnx,
)
from autocompress.evaluators.config import GPU_LATENCY_BACKENDS
from autocompress.evaluators.latency import (
    check_backend,
    check_clock,
    measure_latency,
    torch_threads,
)

if TYPE_CHECKING:
    from autocompress.compression import CompressionPolicy, CompressionSpace

__all__ = [
    "LatencyLUT",
    "architecture_fingerprint",
    "build_standalone",
    "discover_layers",
    "gpu_name",
    "machine_id",
    "space_signature",
    "standalone_onnx",
]

_CALIBRATION_SEED = 1_000_003  # far from the seeds searches and benchmarks draw policies with


# ---------------------------------------------------------------------------------------------
# machine / model identity


def machine_id() -> dict[str, Any]:
    """What a lookup table's timings depend on besides the model: CPU, OS, library versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import onnxruntime

    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "ort": onnxruntime.__version__}


def gpu_name() -> str:
    """Name of the current CUDA device (what a ``torch-cuda`` table's timings depend on)."""
    return str(torch.cuda.get_device_name(torch.cuda.current_device()))


def architecture_fingerprint(model: nn.Module) -> str:
    """sha256 of the class and every ``state_dict`` name, dtype and shape (not the values).

    Latency depends on shapes, not on weights: a retrained model of the same architecture reuses
    its lookup table.
    """
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
    return h.hexdigest()


def space_signature(space: CompressionSpace) -> str:
    """sha256 of the decision points and their knobs (names, ranges, choices)."""
    items = []
    for p in space.decision_points:
        knobs = {}
        for kname, knob in sorted(p.knobs.items()):
            knobs[kname] = [repr(getattr(knob, a, None)) for a in ("low", "high", "choices")]
        items.append([p.name, str(p.kind), knobs])
    items.append(repr(getattr(space, "round_to", None)))
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class LatencyLUT:
    """Per-layer latency lookup table of one model on one backend, batch and thread count.

    Build it with ``LatencyLUT.build`` (cached on disk, keyed by machine, backend, batch,
    threads, architecture, input shape and space); ``predict(policy)`` returns milliseconds.

    Example:
        >>> lut = LatencyLUT.build(model, space, example_input, backend="ort", batch=1)  # doctest: +SKIP
        >>> lut.predict(space.uniform(prune=0.5))  # doctest: +SKIP
    """

    key: str
    backend: str
    batch: int
    threads: int
    input_shape: list[int]
    layers: list[_Layer]
    constant_ms: float
    base_measured_ms: float
    overhead_ms: float = 0.0
    scale: float = 1.0
    clock: str = "wall"
    meta: dict[str, Any] = field(default_factory=dict)

    schema_version: ClassVar[int] = 5

    # -- prediction -------------------------------------------------------------------------
    def layer_ms(self, layer: _Layer, policy: CompressionPolicy) -> float:
        """Predicted milliseconds of one layer under ``policy``."""
        from autocompress.compression.lowrank import factorised_rank

        s = layer.spec
        cin = s["cin"] - _removed(layer.in_sources, policy)
        cout = s["cout"] - _removed(layer.out_sources, policy)
        kin, kout = cin / s["cin"], cout / s["cout"]
        if layer.rank_point is not None and layer.f_grid:  # a recurrent layer
            rank = float(getattr(policy.get(layer.rank_point), layer.rank_knob))
            if _rnn_factorised(s, layer.rank_knob, max(1, round(cin)), max(1, round(cout)),
                               rank) is not None:
                return _interp3(layer.lr_in, layer.lr_out, layer.f_grid, layer.lowrank,
                                kin, kout, rank)
        elif layer.rank_point is not None and layer.r_grid:
            rank = policy.get(layer.rank_point).rank
            if rank < 1.0:
                per_out = int(np.prod(s["kernel"])) if s["kind"] == "conv" else 1
                r = factorised_rank(max(1, round(cout)), max(1, round(cin)) * per_out, rank)
                if r is not None:
                    g = [float(v) for v in layer.r_grid]
                    return (_interp2(layer.in_grid, g, layer.first, kin, float(r))
                            + _interp2(g, layer.out_grid, layer.second, float(r), kout))
        return _interp2(layer.in_grid, layer.out_grid, layer.table, kin, kout)

    def predict(self, policy: CompressionPolicy) -> float:
        """Predicted latency (ms per forward pass at ``batch``) of the compressed model.

        Bit-widths do not enter: latency is that of the pruned / factorised float network
        (``ort-int8``: the whole network in int8), as measured by ``measure_latency``.
        """
        return max(self.constant_ms + self.scale * self.layer_sum(policy), 1e-6)

    def layer_sum(self, policy: CompressionPolicy) -> float:
        """Sum of the layer entries at ``policy`` (before the constant and scale)."""
        return sum(self.layer_ms(lay, policy) for lay in self.layers)

    def breakdown(self, policy: CompressionPolicy) -> dict[str, float]:
        """Per-layer predicted milliseconds plus ``"<constant>"``."""
        out = {lay.name: self.scale * self.layer_ms(lay, policy) for lay in self.layers}
        out["<constant>"] = self.constant_ms
        return out

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (with schema version)."""
        return {
            "_type": "autocompress.LatencyLUT", "_version": self.schema_version, "key": self.key,
            "backend": self.backend, "batch": self.batch, "threads": self.threads,
            "input_shape": list(self.input_shape), "constant_ms": self.constant_ms,
            "base_measured_ms": self.base_measured_ms, "overhead_ms": self.overhead_ms,
            "scale": self.scale, "clock": self.clock, "meta": self.meta, "layers": [lay.__dict__ for lay in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyLUT:
        """Inverse of ``to_dict``; rejects another type or schema version."""
        if d.get("_type") != "autocompress.LatencyLUT":
            raise UserInputError("not a serialised LatencyLUT (missing _type 'autocompress.LatencyLUT')")
        if d.get("_version") != cls.schema_version:
            raise UserInputError(
                f"LatencyLUT schema _version {d.get('_version')!r} is not supported; "
                f"this autocompress reads version {cls.schema_version}"
            )
        return cls(
            key=d["key"], backend=d["backend"], batch=int(d["batch"]), threads=int(d["threads"]),
            input_shape=list(d["input_shape"]), layers=[_Layer(**lay) for lay in d["layers"]],
            constant_ms=float(d["constant_ms"]), base_measured_ms=float(d["base_measured_ms"]),
            overhead_ms=float(d.get("overhead_ms", 0.0)), scale=float(d.get("scale", 1.0)),
            clock=str(d.get("clock", "wall")),
            meta=dict(d.get("meta") or {}),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically (write to a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), sort_keys=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyLUT:
        """Read a table written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"latency table {str(path)!r} does not exist")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserInputError(f"latency table {str(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    # -- building ---------------------------------------------------------------------------
    @staticmethod
    def cache_key(model: nn.Module, space: CompressionSpace, example_input: Tensor, backend: str,
                  batch: int, threads: int, grid: tuple[int, ...], clock: str = "wall") -> str:
        """Key of a table: machine, backend, batch, threads, clock, architecture, input, space."""
        machine = machine_id()
        if backend in GPU_LATENCY_BACKENDS:  # one table per GPU model
            machine["gpu"] = gpu_name()
        payload = {
            "v": LatencyLUT.schema_version, "machine": machine, "backend": backend,
            "batch": batch, "threads": threads, "clock": clock, "arch": architecture_fingerprint(model),
            "input": list(example_input.shape[1:]), "space": space_signature(space),
            "grid": list(grid),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @classmethod
    def build(
        cls,
        model: nn.Module,
        space: CompressionSpace,
        example_input: Tensor,
        backend: str = "ort",
        batch: int = 1,
        threads: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        *,
        keep_points: int = 5,
        rank_points: int = 4,
        warmup: int = 2,
        repeats: int = 7,
        calibration_policies: int = 8,
        clock: str = "wall",
        rebuild: bool = False,
    ) -> LatencyLUT:
        """Profile (or load from the cache) the lookup table of ``model`` under ``space``.

        Args:
            model: the base model.
            space: its compression space (decides which widths and ranks can change).
            example_input: one input sample ``(1, ...)``.
            backend, batch, threads: what the table predicts (see ``measure_latency``).
            cache_dir: where tables are cached (default ``cache_dir()/lut``).
            progress: show a rich progress bar while profiling.
            keep_points: width grid points per pruned dimension.
            rank_points: rank grid points of factorisable layers.
            warmup, repeats: timing settings of each entry.
            calibration_policies: random compressed models measured whole to fit the constant
                and scale (0: constant from the base model alone).
            clock: ``wall`` or ``cpu`` (see ``measure_latency``).
            rebuild: profile again even when a cached table exists.
        """
        check_backend(backend)
        for name, v in (("batch", batch), ("threads", threads), ("keep_points", keep_points),
                        ("rank_points", rank_points)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserInputError(f"LatencyLUT.build {name}={v!r}; expected an integer >= 1")
        if cache_dir is None:
            from autocompress.training import cache_dir as default_cache_dir

            cache_dir = default_cache_dir() / "lut"
        check_clock(clock, threads)
        key = cls.cache_key(model, space, example_input, backend, batch, threads,
                            (keep_points, rank_points, calibration_policies), clock)
        path = Path(cache_dir) / f"lut-{key[:24]}.json"
        if path.is_file() and not rebuild:
            try:
                lut = cls.load(path)
                if lut.key == key:
                    return lut
            except (UserInputError, KeyError, TypeError):
                pass  # unreadable / stale: profile again
        model = model.eval()
        example_input = example_input[:1]
        layers = discover_layers(model, example_input)
        _width_sources(space, model, layers, keep_points)
        prof = _Profiler(backend, batch, threads, warmup, repeats, clock)
        with torch_threads(threads):
            prof.measure_overhead()
            jobs = _plan(layers, space, keep_points, rank_points)
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(TextColumn("[bold]latency table[/] {task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress,
                          transient=True) as bar:
                task = bar.add_task(f"{backend} batch {batch}", total=sum(len(j) for j in jobs))
                for cells in jobs:
                    for cell in cells:
                        cell(prof)
                        bar.advance(task)
                lut = cls(key=key, backend=backend, batch=batch, threads=threads,
                          input_shape=list(example_input.shape[1:]), layers=layers,
                          constant_ms=0.0, base_measured_ms=math.nan,
                          overhead_ms=prof.overhead_ms, clock=clock,
                          meta={"machine": machine_id(), "entries": len(prof.memo),
                                "keep_points": keep_points, "rank_points": rank_points,
                                "calibration_policies": calibration_policies})
                cal = bar.add_task("whole-model calibration", total=calibration_policies + 1)
                lut._calibrate(model, space, example_input, calibration_policies,
                               warmup=warmup, repeats=max(repeats, 15),
                               advance=lambda: bar.advance(cal))
        lut.save(path)
        return lut

    def _calibrate(self, model: nn.Module, space: CompressionSpace, example_input: Tensor,
                   n_policies: int, *, warmup: int, repeats: int, advance: Any) -> None:
        """Fit ``constant_ms`` (and ``scale``) on whole-model measurements.

        The base model is always measured: with no calibration policies the constant is its
        latency minus the sum of its layer entries (exact at the identity). With ``n_policies``
        random compressed models measured as well, ``measured = constant + scale * sum`` is
        fitted robustly (Theil-Sen), which absorbs what standalone layers see differently from layers
        inside the graph (ONNX Runtime's layout reorders at a standalone layer's boundaries,
        fusions across layers); the fit is ignored when it is not well-posed.
        """
        from autocompress.compression import compress
        from autocompress.evaluators.compression_evaluator import structural_policy

        def measure(m: nn.Module) -> float:
            stats = measure_latency(m, example_input, backend=self.backend, batch=self.batch,
                                    threads=self.threads, warmup=warmup, repeats=repeats,
                                    clock=self.clock)
            advance()
            return stats.median_ms

        base = measure(model)
        self.base_measured_ms = base
        sums = [self.layer_sum(space.identity())]
        meas = [base]
        for i in range(n_policies):
            policy = space.sample(_CALIBRATION_SEED + i)
            small = compress(model, structural_policy(policy), space=space)
            sums.append(self.layer_sum(policy))
            meas.append(measure(small))
        self.scale = 1.0
        self.constant_ms = base - sums[0]
        x, y = np.asarray(sums), np.asarray(meas)
        if len(x) >= 3 and float(np.ptp(x)) > 1e-9:
            slope, intercept = _theil_sen(x, y)
            if 0.25 <= slope <= 4.0:
                self.scale, self.constant_ms = float(slope), float(intercept)
        pred = self.constant_ms + self.scale * x
        self.meta["calibration_rel_err"] = [float(v) for v in np.abs(pred - y) / y]

