"""EvalCache: round trip, hit counting, pickling, two processes writing at once, and what the key
covers (weights, model code, data, space, settings, evaluation code)."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from autocompress.evaluators import EvalCache, EvalResult, cache_key, model_fingerprint
from autocompress.evaluators.cache import (
    model_code_fingerprint,
    tensors_fingerprint,
    weights_fingerprint,
)
from autocompress.models import create_model


def _result(acc: float) -> EvalResult:
    return EvalResult(metrics={"acc": acc, "macs": 100.0}, timings={"total": 0.5},
                      latency_info={"backend": "ort", "batch": 1, "threads": 1, "kind": "predicted"})


def test_put_get_round_trip(tmp_path: Path) -> None:
    cache = EvalCache(tmp_path / "c.sqlite")
    assert cache.get("k1") is None and cache.misses == 1
    cache.put("k1", _result(0.75))
    got = cache.get("k1")
    assert got is not None and got.cached and got.metrics == {"acc": 0.75, "macs": 100.0}
    assert got.latency_info["kind"] == "predicted" and cache.hits == 1
    assert "k1" in cache and "k2" not in cache and len(cache) == 1
    cache.put("k1", _result(0.5))  # a duplicate write replaces, never raises
    assert len(cache) == 1 and cache.get("k1").metrics["acc"] == 0.5  # type: ignore[union-attr]
    # a fresh handle (another run) sees the same data
    assert EvalCache(tmp_path / "c.sqlite").get("k1") is not None


def test_failed_results_are_cached_too(tmp_path: Path) -> None:
    cache = EvalCache(tmp_path / "c.sqlite")
    cache.put("bad", EvalResult.failure("compress failed: boom"))
    got = cache.get("bad")
    assert got is not None and got.status == "failed" and got.error == "compress failed: boom"


def test_pickles_by_path(tmp_path: Path) -> None:
    cache = EvalCache(tmp_path / "c.sqlite")
    cache.put("k", _result(0.1))
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.path == cache.path and clone.get("k") is not None


def test_keys_and_fingerprints() -> None:
    torch.manual_seed(0)
    a = create_model("test_mlp")
    b = create_model("test_mlp")
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.net[1].weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
    parts = {"data_fp": "d", "space_fp": "s"}
    base = cache_key("m", "p", "c", "full", **parts)
    assert base == cache_key("m", "p", "c", "full", **parts)
    keys = {base, cache_key("m2", "p", "c", "full", **parts), cache_key("m", "p2", "c", "full", **parts),
            cache_key("m", "p", "c2", "full", **parts), cache_key("m", "p", "c", "low", **parts),
            cache_key("m", "p", "c", "full", data_fp="d2", space_fp="s"),
            cache_key("m", "p", "c", "full", data_fp="d", space_fp="s2")}
    assert len(keys) == 7


def _import_fresh(folder: Path, name: str, source: str) -> ModuleType:
    """Write ``folder/name.py`` and import it anew (as a user's edited model file would be)."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_NET_V1 = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)
    """


def test_code_fingerprint_follows_a_changed_forward_with_the_same_weights(tmp_path: Path) -> None:
    v1 = _import_fresh(tmp_path, "usernet", _NET_V1)
    v1_again = _import_fresh(tmp_path, "usernet", _NET_V1)
    v2 = _import_fresh(tmp_path, "usernet", _NET_V1.replace("return self.fc(x)",
                                                            "return self.fc(x).relu()"))
    a, b, c = v1.Net(), v1_again.Net(), v2.Net()
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(c)
    assert model_code_fingerprint(a) == model_code_fingerprint(b)  # same code, same fingerprint
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_code_fingerprint(a) != model_code_fingerprint(c)
    assert model_fingerprint(a) != model_fingerprint(c)


def test_code_fingerprint_covers_helpers_in_the_same_file(tmp_path: Path) -> None:
    src = _NET_V1.replace("return self.fc(x)", "return act(self.fc(x))") + "\n    def act(x):\n        return x\n"
    a = _import_fresh(tmp_path, "helpers", src).Net()
    b = _import_fresh(tmp_path, "helpers", src.replace("return x\n", "return x * 2\n")).Net()
    b.load_state_dict(a.state_dict())
    assert model_code_fingerprint(a) != model_code_fingerprint(b)


def test_code_fingerprint_without_source_uses_the_loaded_code() -> None:
    """Classes built by exec (a notebook cell) have no source file: their code objects count."""
    def build(body: str) -> nn.Module:
        ns: dict[str, object] = {"nn": nn, "__name__": __name__}  # claims this test file
        exec(textwrap.dedent(_NET_V1.replace("return self.fc(x)", body)), ns)
        return ns["Net"]()  # type: ignore[operator]

    a, b, c = build("return self.fc(x)"), build("return self.fc(x)"), build("return -self.fc(x)")
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    assert model_code_fingerprint(a) == model_code_fingerprint(b)
    assert model_code_fingerprint(a) != model_code_fingerprint(c)


def test_code_fingerprint_covers_overrides_hooks_and_submodules() -> None:
    torch.manual_seed(0)
    base = create_model("test_mlp")
    ref = model_code_fingerprint(base)
    assert model_code_fingerprint(create_model("test_mlp")) == ref

    patched = create_model("test_mlp")
    patched.forward = lambda x: patched.net(x) * 0  # type: ignore[method-assign]
    assert model_code_fingerprint(patched) != ref

    hooked = create_model("test_mlp")
    hooked.net[1].register_forward_hook(lambda m, i, o: o * 0)
    assert model_code_fingerprint(hooked) != ref

    swapped = create_model("test_mlp")
    swapped.net[2] = nn.GELU()  # no weights: only the code tells it apart
    swapped.load_state_dict(base.state_dict())
    assert weights_fingerprint(swapped) == weights_fingerprint(base)
    assert model_code_fingerprint(swapped) != ref


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")
def test_code_fingerprint_of_torchscript_modules() -> None:
    class A(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    class B(A):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * 2

    a, b = A(), B()
    b.load_state_dict(a.state_dict())
    sa, sb = torch.jit.script(a), torch.jit.script(b)
    assert model_code_fingerprint(sa) == model_code_fingerprint(torch.jit.script(a))
    assert model_code_fingerprint(sa) != model_code_fingerprint(sb)


def test_weights_fingerprint_covers_non_persistent_buffers() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.load_state_dict(a.state_dict())
    a.register_buffer("shift", torch.zeros(2), persistent=False)
    b.register_buffer("shift", torch.ones(2), persistent=False)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_tensors_fingerprint() -> None:
    x = torch.arange(12.0).reshape(3, 4)
    assert tensors_fingerprint([x]) == tensors_fingerprint([x.clone()])
    assert tensors_fingerprint([x]) != tensors_fingerprint([x.reshape(4, 3)])
    assert tensors_fingerprint([x]) != tensors_fingerprint([x.double()])
    y = x.clone()
    y[2, 3] += 1
    assert tensors_fingerprint([x]) != tensors_fingerprint([y])
    assert tensors_fingerprint([x[1:]]) == tensors_fingerprint([x[1:].contiguous()])


def test_logic_fingerprint_reads_the_compression_and_evaluator_source() -> None:
    from autocompress.evaluators import cache as cache_mod

    fp = cache_mod.logic_fingerprint()
    assert fp == cache_mod.logic_fingerprint() and len(fp) == 64
    cache_mod.logic_fingerprint.cache_clear()
    try:
        real = Path.read_bytes

        def edited(path: Path) -> bytes:  # the same files, one line of apply.py changed
            data = real(path)
            return data + b"\n# edited\n" if path.name == "apply.py" else data

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Path, "read_bytes", edited)
            assert cache_mod.logic_fingerprint() != fp
    finally:
        cache_mod.logic_fingerprint.cache_clear()
    assert cache_mod.logic_fingerprint() == fp


_WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    from autocompress.evaluators import EvalCache, EvalResult
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cache = EvalCache(path)
    # start writing together: both processes wait until both are ready
    folder = pathlib.Path(path).parent
    (folder / f"ready-{tag}").touch()
    while len(list(folder.glob("ready-*"))) < 2:
        time.sleep(0.005)
    for i in range(n):
        r = EvalResult(metrics={"acc": i / n, "macs": float(i)})
        cache.put(f"{tag}-{i}", r)          # keys of this writer
        cache.put(f"shared-{i}", r)         # keys both writers write
        assert cache.get(f"{tag}-{i}") is not None
    print("done", tag)
    """
)


@pytest.mark.timeout(120)
def test_two_processes_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    outs = [p.communicate(timeout=110) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.startswith("done")
    cache = EvalCache(path)
    assert len(cache) == 3 * n
    for i in range(n):
        for tag in ("a", "b", "shared"):
            got = cache.get(f"{tag}-{i}")
            assert got is not None and got.metrics["macs"] == float(i)


def test_cache_key_changes_with_the_evaluation_version(monkeypatch) -> None:
    from autocompress.evaluators import cache as cache_mod

    before = cache_mod.cache_key("m", "p", "c", "full", data_fp="d", space_fp="s")
    monkeypatch.setattr(cache_mod, "EVALUATION_VERSION", cache_mod.EVALUATION_VERSION + 1)
    after = cache_mod.cache_key("m", "p", "c", "full", data_fp="d", space_fp="s")
    assert after != before  # old results are not reused
