"""ONNX export of a module: the exporter choice, ``proj_size`` LSTMs unrolled, node scopes.

Latency measurement (``evaluators.latency``) and ``export`` (``report.export``) both export through
here, so a measured model and an exported file are the same graph.
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: ONNX opset of every export.
ONNX_OPSET = 17


class _ProjLSTM(nn.Module):
    """An ``nn.LSTM`` with ``proj_size`` (uni- or bidirectional, any depth), its steps as separate
    matrix products.

    ONNX's ``LSTM`` node has no output projection (the TorchScript exporter refuses such an LSTM
    and the dynamo exporter writes a file ONNX Runtime rejects), so ``exportable`` swaps it for
    this module before export: per layer ``k`` and direction ``d`` (``j = k * directions + d``,
    PyTorch's order of ``h_n``), ``ih[j]`` (``W_ih x + b_ih``), ``hh[j]`` (``W_hh h + b_hh``) and
    ``hr[j]`` (``h = W_hr (o * tanh(c))``), PyTorch's equations. The reverse direction runs over
    the steps from last to first; a bidirectional layer's output at step ``t`` is the forward and
    the reverse ``h`` of that step concatenated, the next layer's input. A quantized LSTM's input
    rounding (``act_quant``) and weight bits (``w_bits`` on each matrix, which
    ``store_lowbit_weights`` reads through the exporter's node scopes) come along.
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.act_quant = getattr(lstm, "act_quant", None)
        self.batch_first, self.num_layers = lstm.batch_first, lstm.num_layers
        self.hidden_size, self.proj_size = lstm.hidden_size, lstm.proj_size
        self.directions = 2 if lstm.bidirectional else 1
        self.ih, self.hh, self.hr = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        bits = getattr(lstm, "w_bits", 32)
        for k in range(lstm.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                for mods, name in ((self.ih, "ih"), (self.hh, "hh"), (self.hr, "hr")):
                    w = getattr(lstm, f"weight_{name}_l{k}{suffix}").detach()
                    b = (getattr(lstm, f"bias_{name}_l{k}{suffix}", None)
                         if lstm.bias and name != "hr" else None)
                    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None).to(w.device, w.dtype)
                    with torch.no_grad():
                        lin.weight.copy_(w)
                        if b is not None:
                            lin.bias.copy_(b.detach())
                    if bits < 32:
                        lin.w_bits = bits
                    mods.append(lin)

    def forward(self, x: Tensor, hx: Any = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if self.act_quant is not None:
            x = self.act_quant(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        b, steps = x.shape[0], x.shape[1]
        n = self.num_layers * self.directions
        if hx is None:
            h0 = x.new_zeros(n, b, self.proj_size)
            c0 = x.new_zeros(n, b, self.hidden_size)
        else:
            h0, c0 = hx
        hs, cs = [], []
        for k in range(self.num_layers):
            layer_out = []
            for d in range(self.directions):
                j = k * self.directions + d
                gi = self.ih[j](x)
                h, c = h0[j], c0[j]
                outs: list[Tensor] = [h] * steps
                for t in range(steps) if d == 0 else reversed(range(steps)):
                    i, f, g, o = (gi[:, t] + self.hh[j](h)).chunk(4, -1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = self.hr[j](torch.sigmoid(o) * torch.tanh(c))
                    outs[t] = h
                layer_out.append(torch.stack(outs, 1))
                hs.append(h)
                cs.append(c)
            x = torch.cat(layer_out, -1) if self.directions == 2 else layer_out[0]
        out = x if self.batch_first else x.transpose(0, 1)
        return out, (torch.stack(hs), torch.stack(cs))


def exportable(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy whose ``proj_size`` LSTMs are ``_ProjLSTM``s (same outputs;
    see there why). Batched inputs only, as exports take."""
    def swappable(m: nn.Module) -> bool:
        return isinstance(m, nn.LSTM) and getattr(m, "proj_size", 0) > 0

    if not any(swappable(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if swappable(m):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, _ProjLSTM(m))
    return model


def export_onnx_with(model: nn.Module, example_input: Tensor, *, opset: int = ONNX_OPSET,
                     fold_batchnorm: bool = True) -> tuple[bytes, str]:
    """The model as ONNX bytes with a dynamic batch axis (weights embedded), and the exporter used.

    Uses the TorchScript-based exporter (about 20x faster than the dynamo exporter on small CNNs,
    which matters when a lookup table exports hundreds of single layers; it also keeps module
    scopes in node names, see ``onnx_node_module``) and falls back to the dynamo exporter when the
    graph does not trace. The graph has one input ``input`` and one output ``output``.
    ``fold_batchnorm=False`` keeps BatchNorm layers as ``BatchNormalization`` nodes instead of
    folding them into the preceding convolution's weight, so quantized weights stay on their grid
    (see ``store_lowbit_weights``). A ``proj_size`` LSTM is exported unrolled (``exportable``).
    """
    model = exportable(model.eval())
    buf = io.BytesIO()
    mode: dict[str, Any] = {} if fold_batchnorm else {"training": torch.onnx.TrainingMode.PRESERVE}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (example_input,), buf, dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **mode,
            )
            return buf.getvalue(), "torch.onnx (TorchScript)"
        except Exception:  # noqa: BLE001 - try the other exporter before giving up
            pass
        program = torch.onnx.export(
            model, (example_input,), dynamo=True, external_data=False,
            input_names=["input"], output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False,
        )
        assert program is not None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            program.save(str(path), external_data=False)
            return path.read_bytes(), "torch.onnx (dynamo)"


def export_onnx(model: nn.Module, example_input: Tensor, *, opset: int = ONNX_OPSET) -> bytes:
    """The model as ONNX bytes (see ``export_onnx_with``)."""
    return export_onnx_with(model, example_input, opset=opset)[0]


def within_modules(name: str, prefixes: Sequence[str]) -> bool:
    """True when module ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == m or name.startswith(m + ".") for m in prefixes)


def onnx_node_module(node_name: str) -> str:
    """The module FQN of a node named by the TorchScript ONNX exporter.

    ``/layer2/layer2.0/shortcut/shortcut.0/Conv`` -> ``layer2.0.shortcut.0``: the exporter
    writes one scope per module, children of containers as ``parent.index``.
    """
    comps = [c for c in node_name.split("/") if c][:-1]
    parts: list[str] = []
    prev: str | None = None
    for c in comps:
        parts.append(c[len(prev) + 1:] if prev is not None and c.startswith(prev + ".") else c)
        prev = c
    return ".".join(parts)
