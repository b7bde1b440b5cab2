"""``finetune_point``'s training loop gives what it always gave, bit for bit.

``_reference_finetune`` is the loop of ``finetune_point`` as it was written before the shared KD
loop existed, kept verbatim: same seed, same saved weights and the same per-epoch losses.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.evaluators.accuracy import kd_loss
from autocompress.report import load_run
from autocompress.report._rebuild import rebuild_problem, scored_model
from autocompress.report.finetune import finetune_point, snap_quantized_weights_
from autocompress.training import seed_everything

pytestmark = pytest.mark.timeout(300)


def _reference_finetune(run_dir: Path, point_id: str, *, epochs: int, kd: bool, temperature: float,
                        alpha: float, lr: float, batch_size: int, weight_decay: float,
                        seed: int) -> tuple[nn.Module, list[float]]:
    run = load_run(run_dir)
    point = run.point(point_id)
    problem = rebuild_problem(run)
    teacher = problem.model.eval()
    student = scored_model(problem, point.policy)
    seed_everything(seed)
    loader = problem.data.loader("train", batch_size, shuffle=True, seed=seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses: list[float] = []
    for _ in range(epochs):
        student.train()
        total = n = 0.0
        for x, y in loader:
            out = student(x)
            if kd and alpha > 0:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = kd_loss(out, t_out, y, alpha=alpha, temperature=temperature)
            else:
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        scored = copy.deepcopy(student).eval()
        snap_quantized_weights_(scored)
        losses.append(total / max(n, 1.0))
    student.eval()
    snap_quantized_weights_(student)
    return student, losses


@pytest.mark.parametrize(("pid", "kd"), [("5", True), ("1", False)])
def test_finetune_point_is_bit_identical_to_the_reference_loop(real_run: Path, pid: str, kd: bool) -> None:
    kw = dict(epochs=2, kd=kd, temperature=3.0, alpha=0.8, lr=0.02, batch_size=128,
              weight_decay=1e-4, seed=7)
    res = finetune_point(real_run, pid, **kw)
    want, losses = _reference_finetune(real_run, pid, **kw)
    got = torch.load(res.weights_path, weights_only=True)
    ref = want.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert [h["loss"] for h in res.history] == losses
    assert [h["loss"] for h in json.loads(res.record_path.read_text())["history"]] == losses
    # It trained: the saved weights are not the scored model's.
    run = load_run(real_run)
    before = scored_model(rebuild_problem(run), run.point(pid).policy).state_dict()
    assert any(not torch.equal(got[k], before[k]) for k in ref)
