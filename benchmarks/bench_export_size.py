"""Reported size vs ONNX file size of quantized, sparse and shared points (compact weight storage).

For each model and point: the search's ``size_bytes`` metric (``space.size_bytes(policy)``: weights
at their bit-widths plus one float32 scale per output channel, sparse weights as nonzeros + bitmap,
shared and powers-of-two weights as indices plus their values, every other parameter in float32),
the ONNX file ``autocompress export`` writes (``compressed_onnx_bytes``: quantized weights, LSTM /
GRU ``W`` and ``R`` included, as INT2/INT4/INT8/INT16 codes behind ``DequantizeLinear``; shared and
powers-of-two weights as UINT2/UINT4/UINT8 indices + codebook; sparse weights as nonzeros +
bitmap), their ratio, and the file split into initializer bytes (weights, scales, biases, BatchNorm) and graph bytes (nodes and
names). Sizes do not depend on the weights' values (the sparse and shared rows barely do), so
models are randomly initialised (no training) and the activation ranges are calibrated on random
inputs. Every file is checked against PyTorch in ONNX Runtime (activation rounding replaced by
clipping, as ``export_point`` does): the largest difference is printed.

Run: nice -n 19 .venv/bin/python benchmarks/bench_export_size.py [--models resnet20 test_resnet test_convnet lstm gru]
"""

from __future__ import annotations

import argparse
import time

import torch

#: Knobs of the spaces of the sparse and the shared rows (``share_bits`` excludes ``w_bits``).
_SPARSE_KNOBS = ("prune", "w_bits", "a_bits", "rank", "sparsity")
_SHARE_KNOBS = ("prune", "a_bits", "rank", "sparsity", "share_bits")
#: Knobs of the shared-projection row of stacked recurrent models (``proj_rank`` excludes ``rank``).
_PROJ_KNOBS = ("prune", "w_bits", "a_bits", "proj_rank")
_POW2_KNOBS = ("prune", "a_bits", "rank", "sparsity", "pow2_bits")


def _points(space: object, recurrent: bool) -> dict[str, object]:
    from autocompress.compression import LayerAction

    names = [dp.name for dp in space.decision_points]  # type: ignore[attr-defined]
    uniform = space.uniform  # type: ignore[attr-defined]
    if recurrent:
        return {
            "w8": uniform(w_bits=8),
            "w4": uniform(w_bits=4),
            "w4 a8": uniform(w_bits=4, a_bits=8),
            "rank 0.5 + w8 (unrolled)": uniform(rank=0.5, w_bits=8),
        }
    mixed = uniform(w_bits=4, a_bits=8)
    for i, n in enumerate(names):  # first and last layers and every third one at 8 bits
        if i in (0, len(names) - 1) or i % 3 == 1:
            mixed = mixed.with_layer(n, LayerAction(w_bits=8, a_bits=8))
    return {
        "w8 a8": uniform(w_bits=8, a_bits=8),
        "w4 a8": uniform(w_bits=4, a_bits=8),
        "w4 a32": uniform(w_bits=4),
        "mixed w4/w8 a8": mixed,
        "prune 0.5 + w4 a8": uniform(prune=0.5, w_bits=4, a_bits=8),
        "w2 a8": uniform(w_bits=2, a_bits=8),
        "w3 a8": uniform(w_bits=3, a_bits=8),
    }


def _compact_points(sparse_space: object, share_space: object,
                    pow2_space: object) -> list[tuple[str, object, object]]:
    """``(label, space, policy)`` of the sparse, shared and powers-of-two rows (conv / linear)."""
    sp, sh, p2 = sparse_space.uniform, share_space.uniform, pow2_space.uniform  # type: ignore[attr-defined]
    return [
        ("sparse 0.5", sparse_space, sp(sparsity=0.5)),
        ("sparse 0.8", sparse_space, sp(sparsity=0.8)),
        ("sparse 0.8 + w4 a8", sparse_space, sp(sparsity=0.8, w_bits=4, a_bits=8)),
        ("share 4", share_space, sh(share_bits=4)),
        ("sparse 0.5 + share 4", share_space, sh(sparsity=0.5, share_bits=4)),
        ("sparse 0.8 + share 4", share_space, sh(sparsity=0.8, share_bits=4)),
        ("pow2 4", pow2_space, p2(pow2_bits=4)),
        ("pow2 5", pow2_space, p2(pow2_bits=5)),
        ("sparse 0.8 + pow2 4", pow2_space, p2(sparsity=0.8, pow2_bits=4)),
    ]


def _max_diff(small: torch.nn.Module, x: torch.Tensor) -> float:
    """The file's largest output difference from PyTorch, activation rounding replaced by clipping
    in both (``export_point``'s exact check)."""
    from autocompress.deploy import ort_session
    from autocompress.report.export import activation_quant_as_clip, compressed_onnx_bytes

    with activation_quant_as_clip(small):
        with torch.inference_mode():
            ref = small(x).numpy()
        got = ort_session(compressed_onnx_bytes(small, x[:1])[0], 1).run(None, {"input": x.numpy()})[0]
    return float(abs(got - ref).max())


def main() -> None:
    import onnx

    from autocompress.compression import CompressionSpace, compress
    from autocompress.models import create_model
    from autocompress.models._registry import default_input_shape
    from autocompress.report.export import compressed_onnx_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+",
                    default=["resnet20", "test_resnet", "test_convnet", "lstm", "gru", "test_lstm", "test_gru"])
    args = ap.parse_args()
    torch.manual_seed(0)
    print("| model | point | reported | file | file / reported | initializers | graph | types | opset | max diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for name in args.models:
        model = create_model(name).eval()
        x = torch.randn(16, *default_input_shape(name, model))
        space = CompressionSpace.from_model(model, x[:1])
        recurrent = any(isinstance(m, torch.nn.RNNBase) for m in model.modules())
        rows = [(label, space, policy) for label, policy in _points(space, recurrent).items()]
        if recurrent:  # shared projections need stacked layers (gru, test_gru)
            proj = CompressionSpace.from_model(model, x[:1], knobs=_PROJ_KNOBS)
            if any("proj_rank" in p.knobs for p in proj.decision_points):
                rows.append(("proj_rank 0.5 + w8 (unrolled)", proj, proj.uniform(proj_rank=0.5, w_bits=8)))
        if not recurrent:  # the sparsity, share_bits and pow2_bits knobs act on conv / linear layers
            rows += _compact_points(*(CompressionSpace.from_model(model, x[:1], knobs=k)
                                      for k in (_SPARSE_KNOBS, _SHARE_KNOBS, _POW2_KNOBS)))
        for label, sp, policy in rows:
            small = compress(model, policy, space=sp, calib=x).eval()
            blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
            reported = sp.size_bytes(policy)
            graph = onnx.load_from_string(blob).graph
            init = sum(i.ByteSize() for i in graph.initializer)
            types: dict[str, int] = {}
            for _, _, t in (lowbit.stored if lowbit else ()):
                types[t] = types.get(t, 0) + 1
            kinds = " ".join(f"{n}×{t}" for t, n in sorted(types.items()))
            if lowbit and lowbit.kept_float:
                kinds += f" ({len(lowbit.kept_float)} float)"
            print(f"| {name} | {label} | {reported / 1e3:.1f} KB | {len(blob) / 1e3:.1f} KB | "
                  f"**{len(blob) / reported:.2f}×** | {init / 1e3:.1f} KB | {(len(blob) - init) / 1e3:.1f} KB | "
                  f"{kinds} | {lowbit.opset if lowbit else '-'} | {_max_diff(small, x):.0e} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
