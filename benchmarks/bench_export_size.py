"""Reported size vs ONNX file size of quantized points (low-bit weight storage).

For each model and point: the search's ``size_bytes`` metric (``space.size_bytes(policy)``: weights
at their bit-widths plus one float32 scale per output channel, every other parameter in float32),
the ONNX file ``autocompress export`` writes (``compressed_onnx_bytes``: quantized weights as
INT2/INT4/INT8/INT16 codes behind ``DequantizeLinear``), their ratio, and the file split into
initializer bytes (weights, scales, biases, BatchNorm) and graph bytes (nodes and names). Sizes
do not depend on the weights' values, so models are randomly initialised (no training) and the
activation ranges are calibrated on random inputs.

Run: nice -n 19 .venv/bin/python benchmarks/bench_export_size.py [--models resnet20 test_resnet test_convnet]
"""

from __future__ import annotations

import argparse
import time

import torch


def _points(space: object) -> dict[str, object]:
    from autocompress.compression import LayerAction

    names = [dp.name for dp in space.decision_points]  # type: ignore[attr-defined]
    uniform = space.uniform  # type: ignore[attr-defined]
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


def main() -> None:
    import onnx

    from autocompress.compression import CompressionSpace, compress
    from autocompress.models import create_model
    from autocompress.models._registry import default_input_shape
    from autocompress.report.export import compressed_onnx_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "test_resnet", "test_convnet"])
    args = ap.parse_args()
    torch.manual_seed(0)
    print("| model | point | reported | file | file / reported | initializers | graph | types | opset |")
    print("|---|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for name in args.models:
        model = create_model(name).eval()
        x = torch.randn(16, *default_input_shape(name, model))
        space = CompressionSpace.from_model(model, x[:1])
        for label, policy in _points(space).items():
            small = compress(model, policy, space=space, calib=x).eval()
            blob, _, lowbit = compressed_onnx_bytes(small, x[:1])
            reported = space.size_bytes(policy)
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
                  f"{kinds} | {lowbit.opset if lowbit else '-'} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
