"""Export of real compressed points: ONNX (+int8), TorchScript and pickled modules load and match."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autocompress.errors import UserInputError
from autocompress.report import load_run
from autocompress.report._rebuild import rebuild_problem, scored_model
from autocompress.report.export import (
    export_point,
    float_layers,
    int8_eligible,
    onnx_node_module,
)

pytestmark = pytest.mark.timeout(300)


def _val(run: Path, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    problem = rebuild_problem(load_run(run))
    x, y = problem.data.tensors("val")
    return x[:n], y[:n]


def _reference(run: Path, point: str, x: torch.Tensor) -> np.ndarray:
    r = load_run(run)
    problem = rebuild_problem(r)
    model = scored_model(problem, r.point(point).policy)
    with torch.inference_mode():
        return model(x).numpy()


def test_onnx_export_matches_pytorch_and_is_smaller(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned.onnx"
    info = export_point(real_run, "1", "onnx", out, repeats=5)
    assert info.path == out and out.is_file()
    assert info.max_abs_diff <= 1e-4
    assert info.int8_path is None  # a float policy gets no int8 file
    onnx.checker.check_model(onnx.load(str(out)))
    assert not list(tmp_path.glob("*.data"))  # single file, weights embedded
    # Loads in ONNX Runtime on its own and matches the PyTorch compressed model, any batch size.
    x, _ = _val(real_run)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.max(np.abs(got - _reference(real_run, "1", x))) <= 1e-4
    # Really compressed: half the channels pruned -> a much smaller file than the original's.
    assert info.size_bytes == out.stat().st_size
    assert info.size_ratio < 0.6
    assert info.latency_ms > 0 and info.original_latency_ms > 0 and info.backend == "ort"
    assert info.recorded_acc == pytest.approx(info.acc, abs=0.02)
    log_file = real_run / "export" / "exports.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert sum(rec["path"] == str(out) for rec in log) == 1
    from autocompress.report.export import write_export_record

    write_export_record(info, real_run)  # the same export again: recorded once
    assert len(log_file.read_text().splitlines()) == len(log)


def test_int8_export_for_8bit_point(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    info = export_point(real_run, "2", "onnx", out, repeats=5)
    # The fp32 file carries the simulated 8-bit quantization and still matches PyTorch.
    assert info.max_abs_diff <= 1e-4
    assert info.int8_path == tmp_path / "q.int8.onnx" and info.int8_path.is_file()
    model = onnx.load(str(info.int8_path))
    ops = {n.op_type for n in model.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    init_types = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.INT8 in init_types  # weights stored as int8
    # Smaller even on a ~10k-parameter net, where QDQ scales and zero points weigh in (than the
    # fp32 original: the point's own .onnx file now stores its 8-bit weights as INT8 too).
    assert info.int8_size_bytes is not None and info.int8_size_bytes < 0.8 * info.original_size_bytes
    x, y = _val(real_run, 128)
    sess = ort.InferenceSession(str(info.int8_path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert logits.shape == (len(x), 10) and np.isfinite(logits).all()
    assert float((logits.argmax(1) == y.numpy()).mean()) > 0.85
    assert info.int8_agreement is not None and info.int8_agreement > 0.95
    assert info.int8_acc is not None and info.int8_latency_ms is not None and info.int8_latency_ms > 0
    assert info.int8_layers and not info.int8_float_layers  # every layer of the point is w8/a8


def test_no_int8_for_4bit_point_unless_asked(real_run: Path, tmp_path: Path) -> None:
    info = export_point(real_run, "3", "onnx", tmp_path / "w4.onnx", repeats=3)
    assert info.int8_path is None and not (tmp_path / "w4.int8.onnx").exists()
    assert info.max_abs_diff <= 1e-4


def test_torchscript_loads_and_matches(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ts"
    info = export_point(real_run, "4", "torchscript", out, repeats=5)
    assert info.backend == "torch" and info.max_abs_diff <= 1e-4
    loaded = torch.jit.load(str(out))
    x, _ = _val(real_run)
    with torch.inference_mode():
        got = loaded(x).numpy()
    assert np.max(np.abs(got - _reference(real_run, "4", x))) <= 1e-4
    assert info.size_ratio < 1.0


def test_pt_loads_in_a_fresh_process_without_compress(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    info = export_point(real_run, "2", "pt", out, repeats=3)
    assert info.int8_path is None
    x, _ = _val(real_run, 16)
    torch.save(x, tmp_path / "x.pt")
    ref = _reference(real_run, "2", x)
    np.save(tmp_path / "ref.npy", ref)
    # A plain-torch process: no autocompress import in the script, no policy, no compress().
    script = (
        "import numpy as np, torch\n"
        f"m = torch.load({str(out)!r}, weights_only=False).eval()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.inference_mode():\n"
        "    y = m(x).numpy()\n"
        f"d = np.abs(y - np.load({str(tmp_path / 'ref.npy')!r})).max()\n"
        "print(sum(p.numel() for p in m.parameters()), d)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    n_params, diff = res.stdout.split()
    assert float(diff) <= 1e-5
    assert int(n_params) < info.metrics["params"] * 1.05 + 100


def test_out_exists_refused_unless_force(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(UserInputError, match="already exists"):
        export_point(real_run, "1", "onnx", out)
    assert out.read_bytes() == b"keep me"
    info = export_point(real_run, "1", "onnx", out, force=True, repeats=3)
    assert out.read_bytes()[:8] != b"keep me" and info.size_bytes == out.stat().st_size


def test_bad_inputs(real_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="'77'.*valid points: 1, 2, 3, 4, 5"):
        export_point(real_run, "77", "onnx", tmp_path / "x.onnx")
    with pytest.raises(UserInputError, match="'tflite'.*onnx, torchscript, pt"):
        export_point(real_run, "1", "tflite", tmp_path / "x.tfl")
    with pytest.raises(UserInputError, match="int8"):
        export_point(real_run, "2", "pt", tmp_path / "x.pt", int8=True)
    assert not list(tmp_path.iterdir())


def test_policy_helpers() -> None:
    from autocompress.compression import CompressionPolicy, LayerAction

    p8 = CompressionPolicy({"a": LayerAction(w_bits=8, a_bits=8), "b": LayerAction(prune=0.5)})
    assert int8_eligible(p8) and float_layers(p8) == ["b"]
    assert not int8_eligible(CompressionPolicy({"a": LayerAction(w_bits=4, a_bits=8)}))
    assert not int8_eligible(CompressionPolicy({"a": LayerAction(prune=0.5)}))
    assert onnx_node_module("/layer2/layer2.0/shortcut/shortcut.0/Conv") == "layer2.0.shortcut.0"
    assert onnx_node_module("/fc/Gemm") == "fc"
    assert onnx_node_module("/stem/stem.0/Conv") == "stem.0"


@pytest.mark.slow
def test_conv_net_onnx_int8_and_torchscript(conv_run: Path, tmp_path: Path) -> None:
    """BatchNorm, residual adds and strided shortcuts: the same guarantees on a conv net."""
    info = export_point(conv_run, "1", "onnx", tmp_path / "c.onnx", repeats=3)
    assert info.max_abs_diff <= 1e-4
    assert info.quant_agreement is not None and info.quant_agreement >= 0.98
    assert info.int8_path is not None and info.int8_size_bytes < info.original_size_bytes
    assert info.int8_agreement is not None and info.int8_agreement > 0.95
    ops = {n.op_type for n in onnx.load(str(info.int8_path)).graph.node}
    assert {"Conv", "QuantizeLinear", "DequantizeLinear"} <= ops
    ts = export_point(conv_run, "2", "torchscript", tmp_path / "c.ts", repeats=3)
    assert ts.max_abs_diff <= 1e-4 and ts.size_ratio < 0.9
    x, _ = _val(conv_run, 32)
    with torch.inference_mode():
        got = torch.jit.load(str(tmp_path / "c.ts"))(x).numpy()
    assert np.max(np.abs(got - _reference(conv_run, "2", x))) <= 1e-4


def _weight_producers(path: Path) -> dict[str, str]:
    """Module FQN of each Conv/Gemm node of an ONNX file -> op type producing its weight input."""
    graph = onnx.load(str(path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    return {onnx_node_module(n.name): producer.get(n.input[1], "initializer")
            for n in graph.node if n.op_type in ("Conv", "Gemm")}


@pytest.mark.slow
def test_int8_export_of_a_mixed_point_runs_only_its_8bit_layers_in_int8(conv_run: Path,
                                                                        tmp_path: Path) -> None:
    """--int8 on a point with w4/a4 layers: those stay in float (simulated), the w8/a8 ones run
    in int8, and the file agrees with the PyTorch compressed model (was: every layer forced to
    int8, ~87% agreement on this model, 12.8% on the issue's)."""
    from click.testing import CliRunner

    from autocompress.cli import main

    run = load_run(conv_run)
    policy = run.point("3").policy
    w4 = {n for n, a in policy.layers.items() if (a.w_bits, a.a_bits) == (4, 4)}
    w8 = {n for n, a in policy.layers.items() if (a.w_bits, a.a_bits) == (8, 8)}
    assert w4 and w8
    out = tmp_path / "mixed.onnx"
    res = CliRunner().invoke(main, ["export", str(conv_run), "--point", "3", "--int8", "--out", str(out)])
    assert res.exit_code == 0, res.output[-3000:]
    assert "int8 layers: " in res.stdout and all(f"{n} (w4/a4)" in res.stdout for n in w4)
    info = json.loads((conv_run / "export" / "exports.jsonl").read_text().splitlines()[-1])
    assert set(info["int8_layers"]) == w8
    assert info["int8_agreement"] >= 0.95  # measured 98.1% (fallback scheme: layer inputs+weights)
    assert abs(info["int8_acc"] - info["acc"]) <= 0.03
    producers = _weight_producers(tmp_path / "mixed.int8.onnx")
    for fqn, op in producers.items():
        layer = next((n for n in policy.layers if fqn == n or fqn.startswith(n + ".")), None)
        if layer in w4:
            assert op != "DequantizeLinear", fqn  # float weights (on their 4-bit grid)
        elif layer in w8:
            assert op == "DequantizeLinear", fqn  # int8 weights
    assert any(op == "DequantizeLinear" for op in producers.values())


@pytest.mark.slow
def test_int8_export_that_disagrees_is_refused(conv_run: Path, tmp_path: Path) -> None:
    """1- and 2-bit layers around the int8 ones: the int8 model would disagree, nothing is written."""
    with pytest.raises(UserInputError, match=r"agrees .* on \d+\.\d% .*< 95%.*nothing was written"):
        export_point(conv_run, "4", "onnx", tmp_path / "low.onnx", int8=True, repeats=1)
    assert not list(tmp_path.iterdir())


def test_int8_asked_of_a_point_without_8bit_layers_is_refused(real_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"point 3 has no layer with 8-bit weights and "
                                             r"activations \(.*w4/a8"):
        export_point(real_run, "3", "onnx", tmp_path / "w4.onnx", int8=True)
    with pytest.raises(UserInputError, match="point 1 has no layer .*not quantized"):
        export_point(real_run, "1", "onnx", tmp_path / "f.onnx", int8=True)
    assert not list(tmp_path.iterdir())


def test_cli_export_whose_file_fails_the_check_is_one_line_exit_1(
        real_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export that fails its own PyTorch-vs-file check is reported in one line (status 1), not
    as a traceback, and writes nothing."""
    from click.testing import CliRunner

    from autocompress.cli import main
    from autocompress.report import export as export_mod

    # The file's outputs, as ONNX Runtime returns them, are off by one: the check must fail.
    real = export_mod._ort_logits
    monkeypatch.setattr(export_mod, "_ort_logits", lambda sess, x: real(sess, x) + 1.0)
    out = tmp_path / "x.onnx"
    res = CliRunner().invoke(main, ["export", str(real_run), "--point", "1", "--no-int8", "--out", str(out)])
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the onnx export of point 1 differs"), res.stderr
    assert "Traceback" not in res.output
    assert not out.exists()
