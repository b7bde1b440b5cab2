"""Fine-tuning a point: accuracy recorded before/after, KD, fake-quant training, no silent overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autocompress.errors import UserInputError
from autocompress.report import load_run
from autocompress.report.finetune import finetune_point, snap_quantized_weights_

pytestmark = pytest.mark.timeout(300)


def _finetuned(run_dir: Path, pid: str) -> torch.nn.Module:
    """The latest fine-tuned model of a point, as ``export --finetuned`` loads it."""
    from autocompress.report.finetune import latest_finetune, load_finetuned

    run = load_run(run_dir)
    record = latest_finetune(run_dir, pid)
    assert record is not None
    return load_finetuned(run, run.point(pid), record)


def test_finetune_pruned_point_improves_and_is_recorded(real_run: Path) -> None:
    # The run is shared by the session's tests, and another may have fine-tuned point 1 already:
    # this record is then the next name in the series, never an overwrite.
    earlier = [real_run / "finetune" / name for name in ["point-1.json"] + [f"point-1-{n}.json" for n in range(2, 50)]]
    earlier = earlier[:next(i for i, f in enumerate(earlier) if not f.exists())]
    res = finetune_point(real_run, "1", epochs=2, kd=True, seed=0)
    # Half the hidden units pruned; the evaluator's least-squares refit already recovers most of
    # the loss, so two epochs of KD must not lose accuracy and must end close to the teacher.
    assert res.acc_after >= res.acc_before - 0.005
    assert res.acc_after > res.teacher_acc - 0.03
    assert res.acc_after <= res.teacher_acc + 0.02
    assert res.recorded_acc == pytest.approx(res.acc_before, abs=0.02)
    want = "point-1.json" if not earlier else f"point-1-{len(earlier) + 1}.json"
    assert res.record_path == real_run / "finetune" / want
    assert all(p.is_file() for p in earlier)
    rec = json.loads(res.record_path.read_text())
    assert rec["acc_before"] == res.acc_before and rec["acc_after"] == res.acc_after
    assert rec["kd"] is True and rec["temperature"] == 4.0 and rec["alpha"] == 0.9
    assert len(rec["history"]) == 2
    # Plain tensors on disk: loads with weights_only=True, and rebuilds into the compressed model.
    state = torch.load(res.weights_path, weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())
    model = _finetuned(real_run, "1")
    from autocompress.evaluators.accuracy import topk_correct
    from autocompress.report._rebuild import rebuild_problem

    x, y = rebuild_problem(load_run(real_run)).data.tensors("val")
    assert topk_correct(model, x, y)[1] == pytest.approx(res.acc_after)


def test_finetune_never_overwrites_and_is_seeded(real_run: Path) -> None:
    first = finetune_point(real_run, "4", epochs=1, kd=False, seed=3)
    second = finetune_point(real_run, "4", epochs=1, kd=False, seed=3)
    assert first.record_path != second.record_path
    assert first.record_path.is_file() and second.record_path.is_file()
    assert second.record_path.name == "point-4-2.json"
    assert first.acc_after == second.acc_after  # same seed, same result
    assert json.loads(first.record_path.read_text())["kd"] is False


@pytest.mark.parametrize("pid", ["3", "5"])
def test_finetune_quantized_point_keeps_weights_on_grid(real_run: Path, pid: str) -> None:
    """4-bit weights (also low-rank factors) train through the STE and end on their 4-bit grid."""
    finetune_point(real_run, pid, epochs=1, seed=0)
    model = _finetuned(real_run, pid)
    from autocompress.compression.quantize import quantized_weight_bytes

    layers = [(name, m, p) for name, m in model.named_modules() for p, _ in quantized_weight_bytes(m)]
    assert layers
    from autocompress.report._rebuild import rebuild_problem, scored_model

    run = load_run(real_run)
    before = dict(scored_model(rebuild_problem(run), run.point(pid).policy).named_parameters())
    moved = 0
    for name, m, p in layers:
        assert m.w_bits == 4
        for row in p.detach().reshape(p.shape[0], -1):
            assert len(torch.unique(row)) <= 2**4 - 1  # symmetric 4-bit grid per channel
        moved += int(not torch.equal(before[f"{name}.weight"], p))
    assert moved > 0  # gradients flowed through the straight-through quantizers
    # Snapping again is a no-op: the saved weights are already on the grid.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    snap_quantized_weights_(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_finetune_bad_inputs(real_run: Path) -> None:
    with pytest.raises(UserInputError, match="'9'.*valid points"):
        finetune_point(real_run, "9", epochs=1)
    with pytest.raises(UserInputError, match="epochs=0"):
        finetune_point(real_run, "1", epochs=0)
    with pytest.raises(UserInputError, match="alpha=1.5"):
        finetune_point(real_run, "1", epochs=1, alpha=1.5)
    with pytest.raises(UserInputError, match="temperature=0"):
        finetune_point(real_run, "1", epochs=1, temperature=0)


def test_export_the_finetuned_model(real_run: Path, tmp_path: Path) -> None:
    from autocompress.report.export import export_point

    with pytest.raises(UserInputError, match="no fine-tuned model.*autocompress finetune"):
        export_point(real_run, "2", "onnx", tmp_path / "none.onnx", finetuned=True)
    res = finetune_point(real_run, "2", epochs=1, seed=1)
    info = export_point(real_run, "2", "onnx", tmp_path / "ft.onnx", finetuned=True, repeats=3)
    assert info.finetuned and info.max_abs_diff <= 1e-4
    assert info.recorded_acc == res.acc_after
    assert info.acc == pytest.approx(res.acc_after, abs=0.005)  # ONNX Runtime scores the same model
    assert info.int8_path is not None and info.int8_agreement is not None
    assert info.int8_agreement > 0.95


def test_kd_term_is_kl_teacher_to_student_as_documented() -> None:
    """kd_loss computes KL(p_teacher || p_student); the README and this module say the same."""
    from autocompress.evaluators.accuracy import kd_loss

    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    t, alpha = 3.0, 0.7
    ps, pt = torch.softmax(zs / t, 1), torch.softmax(zt / t, 1)
    kl_ts = (pt * (pt.log() - ps.log())).sum(1).mean()  # KL(teacher || student)
    kl_st = (ps * (ps.log() - pt.log())).sum(1).mean()  # KL(student || teacher)
    ce = torch.nn.functional.cross_entropy(zs, y)
    got = kd_loss(zs, zt, y, alpha=alpha, temperature=t)
    assert got == pytest.approx(float(alpha * t * t * kl_ts + (1 - alpha) * ce), rel=1e-5)
    assert got != pytest.approx(float(alpha * t * t * kl_st + (1 - alpha) * ce), rel=1e-3)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "KL(softmax(z_t/T) ‖ softmax(z_s/T))" in readme
    assert "KL(softmax(z_s/T) ‖ softmax(z_t/T))" not in readme
    import autocompress.report.finetune as ft

    assert "KL(softmax(z_t/T) || softmax(z_s/T))" in (ft.__doc__ or "")
