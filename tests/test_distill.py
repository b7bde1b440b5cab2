"""The one knowledge-distillation loop: both fine-tunes give what they always gave.

``_reference_kd_finetune`` (the evaluator's short fine-tune) and ``_reference_epoch`` (an epoch of
``finetune_point``) are the loops as they were written before ``autocompress.distill`` existed,
kept verbatim: the shared loop must reproduce them bit for bit (same seed, same weights, same
BatchNorm statistics, same losses). ``tests/report/test_finetune_loop.py`` checks
``finetune_point`` itself the same way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autocompress.distill import distill
from autocompress.evaluators.accuracy import kd_finetune, kd_loss
from autocompress.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_cycle_batches(x: Tensor, y: Tensor, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            yield x[idx], y[idx]


def _reference_kd_finetune(student: nn.Module, teacher: nn.Module | None, x: Tensor, y: Tensor, *,
                           steps: int, batch_size: int = 64, lr: float = 1e-3, alpha: float = 0.9,
                           temperature: float = 4.0, seed: int = 0) -> float:
    if steps <= 0:
        return math.nan
    if teacher is not None:
        teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    student.train()
    losses: list[float] = []
    batches = _reference_cycle_batches(x, y, min(batch_size, len(y)), seed)
    try:
        for _ in range(steps):
            xb, yb = next(batches)
            out = student(xb)
            if teacher is not None and alpha > 0:
                with torch.no_grad():
                    t_out = teacher(xb)
                loss = kd_loss(out, t_out, yb, alpha=alpha, temperature=temperature)
            else:
                loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        student.eval()
    tail = losses[-10:]
    return sum(tail) / len(tail)


@pytest.fixture(scope="module")
def teacher_and_data() -> tuple[nn.Module, Tensor, Tensor]:
    """test_resnet (with BatchNorm) and 100 inputs labelled partly by it, partly at random."""
    torch.manual_seed(0)
    teacher = create_model("test_resnet").eval()
    x = torch.randn(100, 3, 16, 16)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    y[::3] = torch.randint(0, 10, (len(y[::3]),), generator=torch.Generator().manual_seed(1))
    return teacher, x, y


def _student(teacher: nn.Module) -> nn.Module:
    student = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return student


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(("with_teacher", "alpha"), [(True, 0.9), (False, 0.9), (True, 0.0)])
def test_kd_finetune_is_bit_identical_to_the_reference_loop(
    teacher_and_data: tuple[nn.Module, Tensor, Tensor], with_teacher: bool, alpha: float,
) -> None:
    teacher, x, y = teacher_and_data
    got, want = _student(teacher), _student(teacher)
    t = teacher if with_teacher else None
    # 100 samples at batch 32: 3 full batches per pass, the tail dropped, 4 passes over the data.
    kw = dict(steps=12, batch_size=32, lr=0.05, alpha=alpha, temperature=3.0, seed=5)
    loss = kd_finetune(got, t, x, y, **kw)
    ref = _reference_kd_finetune(want, t, x, y, **kw)
    assert loss == ref and math.isfinite(loss)
    _assert_same_state(got, want)
    assert not got.training and not teacher.training
    # It trained: the weights and the BatchNorm statistics moved.
    before = _student(teacher).state_dict()
    after = got.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved)


def _reference_epoch(student: nn.Module, teacher: nn.Module, batches: list[tuple[Tensor, Tensor]],
                     opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, *,
                     kd: bool, alpha: float, temperature: float) -> float:
    """One epoch of ``finetune_point``'s loop as it was written before the shared loop."""
    student.train()
    total = n = 0.0
    for x, y in batches:
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
    return total / max(n, 1.0)


@pytest.mark.parametrize("kd", [True, False])
def test_distill_with_a_schedule_matches_the_point_fine_tune_loop(
    teacher_and_data: tuple[nn.Module, Tensor, Tensor], kd: bool,
) -> None:
    """The point fine-tune's recipe (Nesterov, weight decay, cosine schedule, epochs of a ragged
    loader) through ``distill`` equals the loop it replaced, with a BatchNorm student."""
    teacher, x, y = teacher_and_data
    batches = [(x[i:i + 24], y[i:i + 24]) for i in range(0, len(y), 24)]  # last batch of 4
    students = [_student(teacher), _student(teacher)]
    opts = [torch.optim.SGD(s.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
            for s in students]
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=2 * len(batches)) for o in opts]
    for _ in range(2):
        steps = distill(students[0], teacher if kd else None, batches, opts[0], alpha=0.9,
                        temperature=4.0, scheduler=scheds[0])
        total = n = 0.0
        for loss, size in steps:
            total += loss * size
            n += size
        ref = _reference_epoch(students[1], teacher, batches, opts[1], scheds[1], kd=kd, alpha=0.9,
                               temperature=4.0)
        assert [s for _, s in steps] == [len(b[1]) for b in batches]
        assert total / max(n, 1.0) == ref
    _assert_same_state(students[0], students[1])
    assert opts[0].param_groups[0]["lr"] == opts[1].param_groups[0]["lr"] < 0.05


def test_teacher_is_not_run_for_cross_entropy_and_student_ends_in_eval(
    teacher_and_data: tuple[nn.Module, Tensor, Tensor],
) -> None:
    teacher, x, y = teacher_and_data
    student = _student(teacher)  # before the hook: a deep copy would carry it
    calls: list[int] = []
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        opt = torch.optim.SGD(student.parameters(), lr=0.01)
        distill(student, teacher, [(x[:8], y[:8])], opt, alpha=0.0)
        assert calls == [] and not student.training
        distill(student, teacher, [(x[:8], y[:8])], opt, alpha=0.5)
        assert calls == [1] and not teacher.training
    finally:
        hook.remove()

    def broken() -> Iterator[tuple[Tensor, Tensor]]:
        yield x[:8], y[:8]
        raise RuntimeError("data loader failed")

    with pytest.raises(RuntimeError, match="data loader failed"):
        distill(student, None, broken(), opt)
    assert not student.training  # a failed fine-tune leaves no model in train mode behind


def test_hinge_loss_is_bnns_squared_hinge() -> None:
    """max(0, 1 - t_c z_c)^2 averaged over samples and classes, t = +1 for the label, -1
    elsewhere; zero at margin 1."""
    from autocompress.distill import hinge_loss

    z = torch.tensor([[2.0, -1.0, -3.0], [0.5, 0.0, 1.0]])
    y = torch.tensor([0, 2])
    # row 0: all margins met -> 0; row 1: (1 + 0.5)^2 + (1 + 0)^2 + (1 - 1)^2 = 3.25
    assert float(hinge_loss(z, y)) == pytest.approx(3.25 / 6)
    assert float(hinge_loss(torch.tensor([[1.0, -1.0]]), torch.tensor([0]))) == 0.0


def test_binary_weights_train_with_the_hinge_loss_straight_through() -> None:
    """BNN's variant on a tiny model: 1-bit weights (straight-through) fine-tuned with the squared
    hinge loss lower that loss, stay binary after re-projection and classify a separable set."""
    from autocompress.compression import CompressionSpace, compress
    from autocompress.distill import hinge_loss
    from autocompress.report.finetune import snap_quantized_weights_

    torch.manual_seed(0)
    x = torch.randn(256, 64)
    y = (x[:, :10].argmax(1)).clamp(max=9)
    model = create_model("test_mlp", num_classes=10)
    space = CompressionSpace.from_model(model, x[:1].reshape(1, 1, 8, 8))
    small = compress(model, space.uniform(w_bits=1), space=space)
    xs = x.reshape(-1, 1, 8, 8)
    with torch.no_grad():
        before, first = float(hinge_loss(small(xs), y)), float(hinge_loss(small(xs[:32]), y[:32]))
    opt = torch.optim.SGD(small.parameters(), lr=0.1, momentum=0.9)
    batches = [(xs[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)] * 15
    steps = distill(small, None, batches, opt, loss_fn=hinge_loss)
    assert steps[0][0] == pytest.approx(first, rel=1e-5)  # the first step's loss is the hinge loss
    snap_quantized_weights_(small)
    binary = [m for m in small.modules() if getattr(m, "w_bits", 32) == 1]
    assert binary and all(len(torch.unique(m.weight)) <= 2 for m in binary)
    with torch.no_grad():
        after = float(hinge_loss(small(xs), y))
        acc = float((small(xs).argmax(1) == y).float().mean())
    assert after < 0.7 * before and acc > 0.3  # 10 classes: chance is 0.1
