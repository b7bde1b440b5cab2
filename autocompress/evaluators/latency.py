"""Measured latency on this machine: PyTorch eager (CPU or CUDA), ONNX Runtime fp32 and int8.

CPU backends time with the wall or thread CPU clock; ``torch-cuda`` times on the GPU with CUDA
events (kernels are asynchronous, so a host clock would time the launch, not the work).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# The ONNX conversions are shared with ``export``; their names stay importable from here.
from autocompress.deploy import export_onnx, export_onnx_with, ort_session, quantize_int8  # noqa: F401
from autocompress.errors import UserInputError
from autocompress.evaluators.config import (
    GPU_LATENCY_BACKENDS,
    LATENCY_BACKENDS,
    LATENCY_CLOCKS,
    check_backend_available,
)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timings of one forward pass (milliseconds per call at ``batch``).

    ``spread`` is the inter-quartile range relative to the median: a quick noise gauge.
    ``clock`` is ``wall`` (elapsed time) or ``cpu`` (CPU time of the single inference thread).
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    spread: float
    backend: str
    batch: int
    threads: int
    repeats: int
    clock: str = "wall"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields."""
        return asdict(self)


def check_clock(clock: str, threads: int) -> str:
    """Validate a clock name; the CPU clock only measures single-threaded inference."""
    if clock not in LATENCY_CLOCKS:
        raise UserInputError(
            f"latency clock {clock!r} is not supported; allowed: {', '.join(LATENCY_CLOCKS)}"
        )
    if clock == "cpu" and threads != 1:
        raise UserInputError(
            f"latency clock 'cpu' needs threads=1 (got {threads}): it times the calling thread only"
        )
    return clock


def check_backend(backend: str) -> str:
    """Validate a latency backend name (and that this machine can time on it)."""
    if backend not in LATENCY_BACKENDS:
        raise UserInputError(
            f"latency backend {backend!r} is not supported; allowed: {', '.join(LATENCY_BACKENDS)}"
        )
    return check_backend_available(backend)


def latency_device(backend: str, device: torch.device | None = None) -> torch.device:
    """Where a model timed on ``backend`` must live: the CUDA device for ``torch-cuda`` (``device``
    when it is one, else the current CUDA device), the CPU for every other backend."""
    if backend in GPU_LATENCY_BACKENDS:
        if device is not None and device.type == "cuda":
            return device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def batched(example_input: Tensor, batch: int) -> Tensor:
    """``example_input`` (batch 1 or more) repeated / cut to exactly ``batch`` samples."""
    if example_input.dim() == 0:
        raise UserInputError("example_input must have a batch dimension")
    x = example_input[:1]
    return x.expand(batch, *x.shape[1:]).contiguous()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (it is process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_runner(
    model: nn.Module, example_input: Tensor, *, backend: str, batch: int, threads: int,
    calib: Sequence[Tensor] | None = None,
) -> Callable[[], Any]:
    """A zero-argument callable running one forward pass of ``model`` at ``batch`` on ``backend``.

    For ``torch`` the caller is responsible for the thread count (see ``torch_threads``).
    ``calib`` feeds int8 calibration (default: the example input itself; ranges do not change
    speed).
    """
    check_backend(backend)
    model = model.eval()
    x = batched(example_input, batch)
    if backend == "torch":
        def run_torch() -> Any:
            with torch.inference_mode():
                return model(x)

        return run_torch
    if backend in GPU_LATENCY_BACKENDS:
        dev = latency_device(backend, next(iter(model.parameters()), x).device)
        if any(t.device != dev for t in itertools.chain(model.parameters(), model.buffers())):
            import copy

            model = copy.deepcopy(model).to(dev)  # the caller's model stays where it is
        xd = x.to(dev)

        def run_cuda() -> Any:
            with torch.inference_mode():
                return model(xd)

        return run_cuda
    return make_ort_runner(export_onnx(model, example_input[:1]), example_input, backend=backend,
                           batch=batch, threads=threads, calib=calib)


def make_ort_runner(
    onnx_bytes: bytes, example_input: Tensor, *, backend: str, batch: int, threads: int,
    calib: Sequence[Tensor] | None = None,
) -> Callable[[], Any]:
    """Like ``make_runner`` for an ONNX graph with one input named ``input`` (dynamic batch)."""
    if backend == "ort-int8":
        onnx_bytes = quantize_int8(onnx_bytes, list(calib or [example_input[:1]]))
    elif backend != "ort":
        raise UserInputError(f"backend {backend!r} does not run ONNX graphs; allowed: ort, ort-int8")
    sess = ort_session(onnx_bytes, threads)
    feed = {"input": batched(example_input, batch).detach().numpy().astype(np.float32)}

    def run_ort() -> Any:
        return sess.run(None, feed)

    return run_ort


def time_runner(
    run: Callable[[], Any], *, warmup: int = 5, repeats: int = 20, min_repeat_ms: float = 2.0,
    clock: str = "wall",
) -> list[float]:
    """Milliseconds per call over ``repeats`` timed repeats after ``warmup`` calls.

    A repeat loops the call enough times to last at least ``min_repeat_ms`` so that very fast
    calls are not dominated by timer resolution; its time is divided by the loop count.
    ``clock="cpu"`` reads the calling thread's CPU time instead of the wall clock: with one
    intra-op thread, PyTorch and ONNX Runtime run the whole call on the calling thread, so this
    is the call's latency on an otherwise idle core, unaffected by other processes competing for
    the CPU (on a busy 2-core machine wall-clock medians came out up to 4x too high).
    """
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    for _ in range(max(warmup, 1)):
        run()
    t0 = timer()
    run()
    one = max(timer() - t0, 1e-7)
    inner = max(1, int(min_repeat_ms / 1e3 / one))
    out = []
    for _ in range(repeats):
        t0 = timer()
        for _ in range(inner):
            run()
        out.append((timer() - t0) * 1e3 / inner)
    return out


def time_cuda_runner(
    run: Callable[[], Any], *, warmup: int = 5, repeats: int = 20, min_repeat_ms: float = 2.0,
) -> list[float]:
    """Milliseconds per call of a CUDA runner, timed with CUDA events (like ``time_runner``).

    Warm-up calls first (cuDNN picks its algorithms, the caching allocator fills), then each
    repeat records an event before and after a loop of calls long enough to last
    ``min_repeat_ms`` and waits for the second: the time the GPU spent, per call.
    """
    for _ in range(max(warmup, 1)):
        run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    one = max(float(start.elapsed_time(end)), 1e-4)
    inner = max(1, int(min_repeat_ms / one))
    out = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            run()
        end.record()
        end.synchronize()
        out.append(float(start.elapsed_time(end)) / inner)
    return out


def time_backend(run: Callable[[], Any], backend: str, *, warmup: int = 5, repeats: int = 20,
                 min_repeat_ms: float = 2.0, clock: str = "wall") -> list[float]:
    """``time_cuda_runner`` for a GPU backend, else ``time_runner`` with ``clock``."""
    if backend in GPU_LATENCY_BACKENDS:
        return time_cuda_runner(run, warmup=warmup, repeats=repeats, min_repeat_ms=min_repeat_ms)
    return time_runner(run, warmup=warmup, repeats=repeats, min_repeat_ms=min_repeat_ms, clock=clock)


def summarize(times_ms: Sequence[float], *, backend: str, batch: int, threads: int,
              clock: str = "wall") -> LatencyStats:
    """Median, 10th/90th percentiles and inter-quartile range of per-call times."""
    arr = np.asarray(times_ms, dtype=float)
    p10, q1, med, q3, p90 = np.percentile(arr, [10, 25, 50, 75, 90])
    return LatencyStats(
        median_ms=float(med), p10_ms=float(p10), p90_ms=float(p90), iqr_ms=float(q3 - q1),
        spread=float((q3 - q1) / med) if med > 0 else 0.0, backend=backend, batch=batch,
        threads=threads, repeats=len(arr), clock=clock,
    )


def measure_latency(
    model: nn.Module,
    example_input: Tensor,
    backend: str = "ort",
    batch: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    *,
    calib: Sequence[Tensor] | None = None,
    min_repeat_ms: float = 2.0,
    clock: str = "wall",
) -> LatencyStats:
    """Time ``model`` on this machine and summarise: median of ``repeats`` and its spread.

    Args:
        model: the module to time (put in eval mode; not modified otherwise; for ``torch-cuda``
            a copy on the CUDA device is timed unless it is there already).
        example_input: one input sample, shape ``(1, ...)``; repeated to ``batch``.
        backend: ``torch`` (eager), ``ort`` (ONNX Runtime fp32), ``ort-int8`` (static int8) or
            ``torch-cuda`` (eager fp32 on the CUDA device, CUDA events; ``clock`` is ignored
            and reported as ``cuda-events``).
        batch: batch size of each timed call.
        threads: intra-op threads (1 is the most repeatable on a shared machine).
        warmup: untimed calls first.
        repeats: timed repeats; the median is reported.
        calib: calibration inputs for ``ort-int8`` (speed does not depend on their values).
        min_repeat_ms: shortest timed repeat (fast calls are looped).
        clock: ``wall`` (elapsed time) or ``cpu`` (CPU time of the inference thread; needs
            ``threads=1``; robust to other processes on a shared machine).

    Example:
        >>> stats = measure_latency(model, torch.randn(1, 3, 32, 32), backend="ort", batch=8)  # doctest: +SKIP
        >>> stats.median_ms  # doctest: +SKIP
    """
    check_backend(backend)
    for name, v in (("batch", batch), ("threads", threads), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserInputError(f"measure_latency {name}={v!r}; expected an integer >= 1")
    check_clock(clock, threads)
    with torch_threads(threads):
        run = make_runner(model, example_input, backend=backend, batch=batch, threads=threads, calib=calib)
        times = time_backend(run, backend, warmup=warmup, repeats=repeats,
                             min_repeat_ms=min_repeat_ms, clock=clock)
    if backend in GPU_LATENCY_BACKENDS:
        clock = "cuda-events"
    return summarize(times, backend=backend, batch=batch, threads=threads, clock=clock)
