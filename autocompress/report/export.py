"""Export one Pareto point as a deployable file (ONNX, int8 ONNX, TorchScript or a pickled module).

The exported model is rebuilt from the run (``spec.json``: same base model, data split, seed) and
compressed with the point's policy: a really smaller network, not a masked one. Every export is
checked against the PyTorch compressed model before it is kept, and its file size and measured
latency are reported next to the original (uncompressed) model's, exported and timed the same way
in the same process.

Formats:
    * ``onnx``: one self-contained file (weights embedded), dynamic batch axis, opset 17 (21 or
      25 when it stores INT4/INT16 or INT2 weights, see "Low-bit storage" below). Layers
      the policy quantizes are exported with their simulated quantization (weights already on the
      grid, activations through round/clamp), so the file computes what the search scored. Its
      outputs must match PyTorch within ``atol`` (1e-4) on validation inputs, checked with ONNX
      Runtime. Rounding is discontinuous, so where activations are quantized that check runs with
      rounding replaced by clipping to the calibrated ranges in both models (same graph, same
      on-grid weights), and
      the quantized file itself must agree with PyTorch on >= 98% of top-1 predictions (typically
      100%, with ~1% of samples differing by one rounding step). When every quantized layer of the
      policy is 8-bit (weights and activations), an int8 model is also written next to it
      (``NAME.int8.onnx``) by ONNX Runtime static quantization (``quant_pre_process``, then
      ``quantize_static`` with QUInt8 activations and per-channel QInt8 weights, calibrated on the
      calibration split) of the point's model with activation rounding replaced by clipping in
      its 8-bit layers. Only layers with 8-bit weights *and* activations run in int8; every
      other layer stays in float (with its simulated quantization, for a mixed-precision point
      exported with ``int8=True``). The int8 file is first built with every tensor in int8
      (fastest); when its top-1 agreement with the PyTorch model is below
      ``min_int8_agreement`` (95%; each extra 8-bit tensor is a rounding the model does not
      make, which flips near-tied predictions of a weak model), it is rebuilt with only the
      8-bit layers' inputs and weights in int8 (what the fake quantization computes; 98-99% on
      such models). Below the threshold either way, no int8 file is written.

      Low-bit storage: the weights of every quantized Conv / Gemm / MatMul, and the ``W`` and
      ``R`` of every quantized LSTM / GRU / RNN, are stored in their bits
      (``compressed_onnx_bytes``, ``deploy.store_lowbit_weights``): integer codes of the
      narrowest ONNX type ONNX Runtime 1.32 dequantizes per axis on CPU (1-2 bits INT2, opset 25;
      3-4 bits INT4, opset 21; 5-8 bits INT8; 9-16 bits INT16, opset 21), one float32 scale per
      output channel (per gate row of an LSTM / GRU; per tensor at 1-2 bits), a zero zero point
      and a ``DequantizeLinear`` feeding the layer. Weights k-means shared (``share_bits``) are
      stored as UINT2 / UINT4 / UINT8 indices plus their float32 codebook, rebuilt by ``Cast`` +
      ``Gather``; sparse weights (``sparsity``) as their nonzeros (float32, codes or shared
      indices) plus a one-bit-per-entry bitmap of their positions (the layout ``size_bytes``
      counts), rebuilt by ``BitShift`` + ``NonZero`` + ``ScatterElements`` + ``Reshape`` (+ ``Mul``
      by the scales), when smaller than dense. The
      rebuilt weights equal the fp32 ones (checked per tensor), so the file passes the same
      checks; BatchNorm is then kept as ``BatchNormalization`` (folded into the weights it would
      move them off their grid). The file's size is printed next to the search's ``size_bytes``
      (``ExportInfo.reported_size_bytes``): on resnet20 the file is 1.07x the reported size at
      w8/a8, 1.14x at w4/a8, 1.06x at w4 with float activations, 1.11x mixed w4/w8
      (``benchmarks/bench_export_size.py``, which also has the sparse, shared and RNN rows).
      What remains: 3-bit weights are stored in INT4 (4/3 of their bits), 1-bit (binary) in
      INT2 (2x; ternary 2-bit is exact); packing 1 or 3 bits would need a custom operator. The
      rest of the file is not weights: the graph (the activation quantizers' round/clip nodes,
      about 10 per layer; names shortened; an LSTM / GRU factorised by ``rank`` is unrolled over
      the steps, 15-40 KB of nodes on the test models), BatchNorm running statistics (not
      counted by ``size_bytes``), biases and scales (counted), ~20 KB on resnet20, 5-10 KB on
      the tiny test models, where it dominates. Attention weights, and weights off their grid
      (named in ``ExportInfo.weight_float_layers``), stay float32. A point without quantized,
      sparse or shared weights is exported exactly as before. ONNX Runtime fuses a
      ``DequantizeLinear`` feeding a ``MatMul`` into ``MatMulNBits``, whose default accuracy level
      quantizes the float input to int8: load such a file with the session option
      ``session.qdq_matmulnbits_accuracy_level = 1`` (as ``deploy.ort_session`` does) to get
      the model's float computation.
    * ``torchscript``: ``torch.jit.trace`` of the compressed model, saved by ``torch.jit.save``;
      loads with ``torch.jit.load(path)`` and needs neither autocompress nor the model's code.
    * ``pt``: the whole compressed ``nn.Module`` pickled by ``torch.save``; loads with
      ``torch.load(path, weights_only=False)`` as a module ready to run or train further (the
      pruned shapes are in the module itself; no policy, space or ``compress`` call is needed, only
      the model's classes importable, e.g. autocompress installed for built-in models).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor, nn

# The ONNX / int8 / TorchScript conversions are shared with latency measurement, and the checks,
# file builders and record live in their own modules; the names tests and benchmarks import from
# here stay importable.
from autocompress.deploy import (  # noqa: F401
    INT8_LAYER_OPS,
    ONNX_OPSET,
    LowBitWeights,
    export_onnx_with,
    exportable,
    onnx_node_module,
    ort_session,
    pt_bytes,
    quantize_int8,
    store_lowbit_weights,
    torchscript_bytes,
    within_modules,
)
from autocompress.errors import CheckFailedError, UserInputError
from autocompress.report._export_checks import (  # noqa: F401
    _load,
    _ort_latency,
    _ort_logits,
    _top1,
    _torch_latency,
    _torch_logits,
    activation_quant_as_clip,
)
from autocompress.report._export_files import (  # noqa: F401
    _bits,
    compressed_onnx_bytes,
    float_layers,
    int8_eligible,
    int8_layers,
    onnx_bytes,
    shared_layers,
    sparse_layers,
    weight_bits,
)
from autocompress.report._export_info import ExportInfo, _names
from autocompress.report.run import load_run
from autocompress.rundir import EXPORT_DIR, EXPORT_LOG, RunRecord, write_bytes_atomic

if TYPE_CHECKING:
    from autocompress.problem import Problem
    from autocompress.rundir import Candidate

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "pt")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "pt": ".pt"}


class ExportMismatchError(CheckFailedError):
    """The exported file does not compute what the PyTorch compressed model computes."""


def _write_atomic(path: Path, blob: bytes) -> None:
    write_bytes_atomic(path, blob)


def default_export_path(run_dir: str | Path, point_id: str | int, fmt: str) -> Path:
    """``RUN/export/point-<id>.<onnx|ts|pt>``."""
    return Path(run_dir) / EXPORT_DIR / f"point-{point_id}{_SUFFIX[fmt]}"


def export_point(
    run_dir: str | Path,
    point_id: str | int,
    fmt: str = "onnx",
    out: str | Path | None = None,
    *,
    force: bool = False,
    int8: bool | None = None,
    batch: int = 1,
    threads: int = 1,
    repeats: int = 20,
    atol: float = 1e-4,
    min_agreement: float = 0.98,
    min_int8_agreement: float = 0.95,
    check_samples: int = 256,
    progress: bool = False,
    finetuned: bool = False,
    device: str | None = None,
) -> ExportInfo:
    """Write point ``point_id`` of the run's front as a really compressed model file.

    Args:
        run_dir: the search run directory.
        point_id: an id of a Pareto point (see ``autocompress report RUN``).
        fmt: ``onnx``, ``torchscript`` or ``pt`` (see the module docstring).
        out: output file (default ``RUN/export/point-<id>.<ext>``); an existing file is refused
            unless ``force``.
        force: overwrite ``out`` (and the int8 file) if they exist.
        int8: also write ``NAME.int8.onnx`` (ONNX only); None = when every quantized layer of
            the policy is 8-bit. ``True`` on a mixed-precision point runs exactly its layers with
            8-bit weights and activations in int8 and keeps the others in float with their
            simulated quantization (``ExportInfo.int8_layers`` / ``int8_float_layers``).
        batch, threads, repeats: latency measurement settings (median of ``repeats``).
        atol: largest allowed output difference between the file and PyTorch.
        min_agreement: smallest allowed top-1 agreement of an ONNX file with simulated activation
            quantization (whose outputs can differ by single rounding steps; see below).
        min_int8_agreement: smallest top-1 agreement of the int8 file with the PyTorch compressed
            model on the validation split; below it no int8 file is written (and an explicit
            ``int8=True`` is refused).
        check_samples: validation samples used for the output comparison.
        progress: show progress while a missing base model is trained.
        finetuned: export the point's latest fine-tuned model (``finetune_point``) instead of
            the model as the search scored it.
        device: where the point is rebuilt (recalibration, the evaluator's short fine-tune);
            None: the run's own setting. The file is written, checked and timed on the CPU.

    Returns:
        ``ExportInfo`` with sizes, latencies (original alongside), accuracy and the check result.

    Raises:
        UserInputError: unknown format, point not on the front, ``out`` exists or its directory
            does not, int8 asked of a non-ONNX format or of a point without 8-bit layers, or an
            asked-for int8 model that does not agree with PyTorch (nothing is written).
        ExportMismatchError: the file's outputs differ from PyTorch by more than ``atol`` (nothing
            is left at ``out``).

    Example:
        >>> info = export_point("runs/demo", 3, "onnx", "model.onnx")  # doctest: +SKIP
        >>> print("\\n".join(info.lines()))  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    _check_settings(fmt, int8, atol)
    run = load_run(run_dir)
    point = run.point(point_id)
    path, int8_path = _destinations(run, point, fmt, out, int8=int8, force=force)
    record, small, problem = _point_model(run, point, finetuned=finetuned, progress=progress,
                                          device=device)
    inputs = _Inputs.of(problem, check_samples, batch)
    if fmt == "onnx":
        checked = _check_onnx(small, problem.model.eval(), inputs, point.id, threads=threads,
                              repeats=repeats, atol=atol, min_agreement=min_agreement)
    else:
        checked = _check_torch(fmt, small, problem.model.eval(), inputs, threads=threads,
                               repeats=repeats)
    got, ref = checked.got, checked.ref
    diff = float(np.max(np.abs(got - ref))) if got.size else 0.0
    if not (got.shape == ref.shape and diff <= atol):
        raise ExportMismatchError(
            f"the {fmt} export of point {point.id} differs from the PyTorch compressed model by "
            f"{diff:.3g} (> {atol:g}); nothing was written"
        )
    q_blob: bytes | None = None
    int8_fields: dict[str, Any] = {}
    if int8_path is not None:
        q_blob, int8_fields = _int8_model(small, problem, point, inputs, int8_path, asked=bool(int8),
                                          threads=threads, min_int8_agreement=min_int8_agreement)
    _write_atomic(path, checked.blob)
    if q_blob is not None and int8_path is not None:
        _write_atomic(int8_path, q_blob)
        int8_fields["int8_latency_ms"] = _ort_latency(q_blob, inputs.x_lat, threads, repeats)
    recorded = point.metrics.get("acc") if record is None else record.get("acc_after")
    reported_size = point.metrics.get("size_bytes")
    info = ExportInfo(
        point_id=point.id, format=fmt, path=path, size_bytes=len(checked.blob),
        original_size_bytes=len(checked.orig_blob), latency_ms=checked.latency,
        original_latency_ms=checked.orig_latency, backend=checked.backend, batch=batch,
        threads=threads, max_abs_diff=diff, acc=checked.acc,
        recorded_acc=None if recorded is None or not math.isfinite(recorded) else recorded,
        metrics=dict(point.metrics), exporter=checked.exporter, finetuned=record is not None,
        seconds=time.perf_counter() - t0, test_acc=checked.test_acc,
        test_samples=0 if inputs.test is None else len(inputs.test[1]),
        reported_size_bytes=float(reported_size) if isinstance(reported_size, (int, float)) else None,
        **checked.fields, **int8_fields,
    )
    write_export_record(info, run.path)
    return info


# -- the steps of export_point ------------------------------------------------------------------


def _check_settings(fmt: str, int8: bool | None, atol: float) -> None:
    if fmt not in FORMATS:
        raise UserInputError(f"export format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise UserInputError(f"int8 export is an ONNX Runtime model; use --format onnx, not {fmt!r}")
    if not math.isfinite(atol) or atol <= 0:
        raise UserInputError(f"atol={atol!r}; expected a positive number")


def _destinations(run: RunRecord, point: Candidate, fmt: str, out: str | Path | None, *,
                  int8: bool | None, force: bool) -> tuple[Path, Path | None]:
    """The file to write and the int8 file (None when no int8 model is made), both checked free."""
    path = Path(out) if out is not None else default_export_path(run.path, point.id, fmt)
    if out is not None:
        # Only the default directory (RUN/export/) is created; a typo in --out is not.
        if not path.parent.exists():
            raise UserInputError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not "
                                 "exist; create it first or choose another path")
        if not path.parent.is_dir():
            raise UserInputError(f"--out {str(path)!r}: {str(path.parent)!r} is not a directory")
    do_int8 = fmt == "onnx" and (int8_eligible(point.policy) if int8 is None else bool(int8))
    if do_int8 and not int8_layers(point.policy):
        quantized = [n for n, a in point.policy.layers.items() if a.w_bits < 32 or a.a_bits < 32]
        raise UserInputError(
            f"--int8: point {point.id} has no layer with 8-bit weights and activations "
            f"({_names(_bits(point.policy, quantized), 6) if quantized else 'it is not quantized'}); "
            "an int8 model would run layers at bit-widths the search did not score"
        )
    int8_path = path.with_name(path.stem + ".int8.onnx") if do_int8 else None
    for p in (path, int8_path):
        if p is not None and p.exists() and not force:
            raise UserInputError(f"--out {str(p)!r} already exists; pass --force to overwrite it "
                                 "or choose another path")
        if p is not None and p.is_dir():
            raise UserInputError(f"--out {str(p)!r} is a directory; give a file path")
    return path, int8_path


def _point_model(run: RunRecord, point: Candidate, *, finetuned: bool, progress: bool,
                 device: str | None) -> tuple[dict[str, Any] | None, nn.Module, Problem]:
    """The fine-tune record (when ``finetuned``), the point's compressed model on the CPU and the
    rebuilt problem."""
    from autocompress.report._rebuild import rebuild_problem, scored_model
    from autocompress.report.finetune import latest_finetune, load_finetuned

    record = latest_finetune(run.path, point.id) if finetuned else None
    if finetuned and record is None:
        raise UserInputError(
            f"point {point.id} has no fine-tuned model in {str(run.path / 'finetune')!r}; run "
            f"`autocompress finetune {run.path} --point {point.id}` first"
        )
    # The fine-tuned weights are checked (and refused when they are not plain tensors) before
    # anything is rebuilt; the problem is memoised, so it is built once either way.
    small = (load_finetuned(run, point, record, progress=progress, device=device)
             if record is not None else None)
    problem = rebuild_problem(run, progress=progress, device=device)
    if small is None:
        small = scored_model(problem, point.policy)
    return record, small.cpu(), problem  # rebuilt on the device; written, checked and timed on the CPU


@dataclass(frozen=True)
class _Inputs:
    """The inputs an export is checked and timed on (validation, test, a latency batch)."""

    example: Tensor
    x_val: Tensor
    y_val: Tensor
    x_check: Tensor
    x_lat: Tensor
    test: tuple[Tensor, Tensor] | None

    @classmethod
    def of(cls, problem: Problem, check_samples: int, batch: int) -> _Inputs:
        example = problem.example_input
        x_val, y_val = problem.data.tensors("val")
        test = problem.data.tensors("test") if getattr(problem.data, "test", None) is not None else None
        return cls(example=example, x_val=x_val, y_val=y_val, x_check=x_val[:check_samples],
                   x_lat=example[:1].expand(batch, *example.shape[1:]).contiguous(), test=test)


@dataclass
class _Checked:
    """One format's file of the point and of the original model, checked and timed."""

    blob: bytes
    orig_blob: bytes
    exporter: str
    backend: str
    got: np.ndarray  # the file's outputs on the check inputs
    ref: np.ndarray  # the PyTorch model's (both with activation rounding clipped, when it had any)
    acc: float
    test_acc: float | None
    latency: float
    orig_latency: float
    fields: dict[str, Any]  # ExportInfo's weight storage and quantization-check fields


def _check_onnx(small: nn.Module, original: nn.Module, inputs: _Inputs, point_id: str, *,
                threads: int, repeats: int, atol: float, min_agreement: float) -> _Checked:
    """The compact ONNX file, scored and compared by ONNX Runtime, and both files timed."""
    example, x_check = inputs.example, inputs.x_check
    ref = _torch_logits(small, x_check)
    blob, exporter, lowbit = compressed_onnx_bytes(small, example)
    fields = _storage_fields(small, lowbit)
    orig_blob, _ = onnx_bytes(original, example)
    sess = ort_session(blob, threads)
    got = _ort_logits(sess, x_check)
    acc = _top1(_ort_logits(sess, inputs.x_val), inputs.y_val)
    test_acc = None if inputs.test is None else _top1(_ort_logits(sess, inputs.test[0]), inputs.test[1])
    quant: dict[str, Any] = {}
    with activation_quant_as_clip(small) as had_quant:
        if had_quant:
            # Activation rounding is discontinuous: ~1e-6 float noise between ONNX Runtime's
            # kernels (fused Conv+BN) and PyTorch's flips single rounding steps in ~1% of
            # samples. The exact check runs with rounding replaced by clipping in both (same
            # graph, same on-grid weights); the quantized graph is checked by agreement.
            flips = np.abs(got - ref).reshape(len(got), -1).max(axis=1)
            quant = {"quant_max_abs_diff": float(flips.max()) if flips.size else 0.0,
                     "quant_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                     "quant_match_fraction": float((flips <= atol).mean())}
            ref = _torch_logits(small, x_check)
            got = _ort_logits(ort_session(compressed_onnx_bytes(small, example)[0], threads), x_check)
    if quant and quant["quant_agreement"] < min_agreement:
        raise ExportMismatchError(
            f"the onnx export of point {point_id} agrees with the PyTorch compressed model on "
            f"{100 * quant['quant_agreement']:.1f}% of top-1 predictions (< "
            f"{100 * min_agreement:g}%); nothing was written"
        )
    latency = _ort_latency(blob, inputs.x_lat, threads, repeats)
    orig_latency = _ort_latency(orig_blob, inputs.x_lat, threads, repeats)
    return _Checked(blob, orig_blob, exporter, "ort", got, ref, acc, test_acc, latency, orig_latency,
                    {**quant, **fields})


def _storage_fields(small: nn.Module, lowbit: LowBitWeights | None) -> dict[str, Any]:
    """``ExportInfo``'s ``weight_storage``, ``weight_float_layers`` and ``onnx_opset``."""
    if lowbit is None:
        return {"onnx_opset": ONNX_OPSET}
    bits, shared = weight_bits(small), shared_layers(small)

    def label(m: str, b: int | None = None) -> str:
        if m in shared:
            return f"share{shared[m]}"
        return f"w{b if b is not None else bits.get(m, 32)}"

    return {
        "weight_storage": tuple(f"{m}: {label(m, b)} as {t}" for m, b, t in lowbit.stored),
        "weight_float_layers": tuple(f"{m} ({label(m)}): {why}" for m, why in lowbit.kept_float),
        "onnx_opset": lowbit.opset,
    }


def _check_torch(fmt: str, small: nn.Module, original: nn.Module, inputs: _Inputs, *,
                 threads: int, repeats: int) -> _Checked:
    """The TorchScript or pickled file, loaded back, scored and compared, and both files timed."""
    ref = _torch_logits(small, inputs.x_check)
    example = inputs.example
    blob = torchscript_bytes(small, example) if fmt == "torchscript" else pt_bytes(small)
    orig_blob = torchscript_bytes(original, example) if fmt == "torchscript" else pt_bytes(original)
    exporter = "torch.jit.trace" if fmt == "torchscript" else "torch.save (pickled module)"
    loaded = _load(fmt, blob)
    got = _torch_logits(loaded, inputs.x_check)
    acc = _top1(_torch_logits(loaded, inputs.x_val), inputs.y_val)
    test_acc = (None if inputs.test is None
                else _top1(_torch_logits(loaded, inputs.test[0]), inputs.test[1]))
    latency = _torch_latency(loaded, inputs.x_lat, threads, repeats)
    orig_latency = _torch_latency(_load(fmt, orig_blob), inputs.x_lat, threads, repeats)
    return _Checked(blob, orig_blob, exporter, "torch", got, ref, acc, test_acc, latency,
                    orig_latency, {})


def _int8_model(small: nn.Module, problem: Problem, point: Candidate, inputs: _Inputs,
                int8_path: Path, *, asked: bool, threads: int, min_int8_agreement: float
                ) -> tuple[bytes | None, dict[str, Any]]:
    """The int8 ONNX file of the point (None when it does not agree well enough with the model)
    and ``ExportInfo``'s int8 fields; refused when ``asked`` for and it does not agree."""
    # Only the layers the policy runs at 8-bit weights and activations become int8. Their
    # source is this very model with their activation rounding replaced by clipping: 8-bit
    # weights already sit on the symmetric per-channel grid ORT quantizes them to, and ORT's
    # calibration finds the clipped ranges the model was scored (or fine-tuned) with. Every
    # other layer of the policy stays in float with its simulated quantization (rounding
    # included), as the search scored it.
    policy, x_val = point.policy, inputs.x_val
    q_layers = int8_layers(policy)
    keep_float = [n for n in policy.layers if n not in q_layers]
    simulated = [n for n in keep_float if policy[n].w_bits < 32 or policy[n].a_bits < 32]
    with activation_quant_as_clip(small, only=q_layers):
        float_blob = onnx_bytes(small, inputs.example)[0]
    ref_val = _torch_logits(small, x_val)
    # The fast all-int8 graph when every quantized layer is 8-bit and it agrees with the
    # model; else (and for mixed precision) only the 8-bit layers' inputs and weights.
    schemes = ("full", "layers") if int8_eligible(policy) else ("layers",)
    for scheme in schemes:
        q_blob = quantize_int8(float_blob, problem.evaluator.calib_batches,
                               exclude_modules=keep_float, scheme=scheme)
        q_logits = _ort_logits(ort_session(q_blob, threads), x_val)
        agreement = float((q_logits.argmax(1) == ref_val.argmax(1)).mean()) if len(x_val) else 1.0
        if agreement >= min_int8_agreement:
            break
    if agreement < min_int8_agreement:
        msg = (f"the int8 model of point {point.id} agrees with the PyTorch compressed model on "
               f"{100 * agreement:.1f}% of top-1 predictions (< {100 * min_int8_agreement:g}%)")
        if asked:  # asked for: refuse the whole export rather than write a model that lies
            raise UserInputError(f"{msg}; nothing was written (export without --int8)")
        return None, {"int8_note": f"{msg}; no int8 file written"}
    return q_blob, {
        "int8_path": int8_path,
        "int8_size_bytes": len(q_blob),
        "int8_acc": _top1(q_logits, inputs.y_val),
        "int8_agreement": agreement,
        "int8_layers": tuple(q_layers),
        "int8_float_layers": tuple(_bits(policy, simulated)),
        "int8_scheme": scheme,
    }


def write_export_record(info: ExportInfo, run_dir: str | Path) -> Path:
    """Append the export's facts to ``RUN/export/exports.jsonl`` (a log; never rewritten).

    ``export_point`` calls it; recording the same export again adds nothing.
    """
    log = Path(run_dir) / EXPORT_DIR / EXPORT_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(info.to_dict(), sort_keys=True)
    if log.is_file() and line in log.read_text().splitlines():
        return log
    with open(log, "a") as fh:
        fh.write(line + "\n")
    return log
