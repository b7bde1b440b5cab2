"""EvalCache: round trip, hit counting, pickling, and two processes writing at once."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from autocompress.evaluators import EvalCache, EvalResult, cache_key, model_fingerprint
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
    base = cache_key("m", "p", "c", "full")
    assert base == cache_key("m", "p", "c", "full")
    assert len({base, cache_key("m2", "p", "c", "full"), cache_key("m", "p2", "c", "full"),
                cache_key("m", "p", "c2", "full"), cache_key("m", "p", "c", "low")}) == 5


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

    before = cache_mod.cache_key("m", "p", "c", "full")
    monkeypatch.setattr(cache_mod, "EVALUATION_VERSION", cache_mod.EVALUATION_VERSION + 1)
    assert cache_mod.cache_key("m", "p", "c", "full") != before  # old results are not reused
