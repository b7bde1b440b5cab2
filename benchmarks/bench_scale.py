"""Scale benchmark: per-trial overheads, trials/minute vs local workers, and a throughput model.

Measured here, with a deliberately cheap evaluator (``test_mlp`` on digits, 64 validation
samples, latency off, evaluation cache off) so that the engine's own costs are what is timed:

1. Per-worker set-up: building the problem from its settings (what a worker without the shipped
   problem pays) vs unpickling the shipped one (what it pays now), and the pickle's size.
2. Storage round trip: one Optuna ``ask`` + ``tell`` (with the trial's user attributes) on the
   journal file (the default) and on SQLite.
3. Evaluation cache: one ``EvalCache.put`` and one ``get`` (SQLite) of a real result.
4. Scheduling: the same search run by 1, 2 and 4 local worker processes sharing one study (a
   journal file; each process asks, evaluates and tells on its own, as several ``autocompress
   search`` processes or Ray trials do); trials/minute between the first and the last completed
   trial of the study, and the per-trial overhead that is not evaluation:
   ``workers x span / trials - mean evaluation seconds``. With ``--ray`` the same is measured as
   Ray Tune trials on one local Ray (Ray gives its raylet a fixed 30 s to start, which a heavily
   loaded machine can miss; the script then stops with Ray's error).

From these, a simple model: each worker finishes a trial every ``E + o`` seconds (evaluation plus
the per-trial overhead measured in 4), and the driver handles trials one at a time, ``s`` seconds
each (the storage round trip of 2 plus Tune's own bookkeeping, measured as the 1-worker overhead),
so ``throughput(W) = min(W / (E + o), 1 / s)``. The script prints it for a 10,000-candidate
ResNet-50 / ImageNet sweep on N GPU nodes, with the evaluation cost ``E`` given by
``--resnet50-eval-s`` (an assumption stated in the output, not measured here), and the number of
GPUs at which the driver (scheduler + storage) becomes the bottleneck.

Usage::

    nice -n 19 python benchmarks/bench_scale.py --out /tmp/bench-scale --json /tmp/bench-scale.json
    python benchmarks/bench_scale.py --tiny --out /tmp/bench-scale-tiny   # seconds; for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _spec(out: Path, **kw: Any) -> Any:
    from autocompress.search import SearchSpec

    settings = {"model": "test_mlp", "data": "digits", "knobs": ["prune"], "budgets": ["macs=50%"],
                "strategy": "random", "seed": 0, "trials": 4, "out": str(out), "cache": False,
                "train_epochs": 2, "device": "cpu",
                "evaluator": {"latency": "none", "val_samples": 64, "recalib_batches": 2}}
    settings.update(kw)
    return SearchSpec.from_dict(settings)


def _median_s(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def setup_costs(out: Path, repeats: int) -> tuple[dict[str, float], Any]:
    from autocompress.search.runner import build_problem

    spec = _spec(out / "setup")
    problem = build_problem(spec, progress=False)  # trains (once) and caches the base model
    problem.base  # noqa: B018 - the base result is part of what a driver ships
    build_s = _median_s(lambda: build_problem(spec, progress=False), repeats)
    blob = pickle.dumps(problem)
    unpickle_s = _median_s(lambda: pickle.loads(blob), repeats)
    return {"build_problem_s": build_s, "unpickle_shipped_s": unpickle_s,
            "shipped_bytes": float(len(blob))}, problem


def storage_round_trip(out: Path, n: int) -> dict[str, float]:
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, float] = {}
    for name, storage in (("journal", JournalStorage(JournalFileBackend(str(out / "bench.journal")))),
                          ("sqlite", RDBStorage(f"sqlite:///{out / 'bench.db'}"))):
        study = optuna.create_study(storage=storage, directions=["maximize", "minimize"],
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            trial = study.ask()
            trial.suggest_float("p", 0.0, 0.8)
            trial.set_user_attr("policy", json.dumps({"layer": i}))
            trial.set_user_attr("status", "ok")
            study.tell(trial, [0.9, 1e6])
            times.append(time.perf_counter() - t0)
        res[f"{name}_ask_tell_ms"] = 1e3 * statistics.median(times)
    return res


def cache_round_trip(out: Path, problem: Any, n: int) -> dict[str, float]:
    from autocompress.evaluators import EvalCache

    cache = EvalCache(out / "cache" / "evals.sqlite")
    result = problem.evaluator.evaluate(problem.space.uniform(prune=0.5))
    puts, gets = [], []
    for i in range(n):
        key = f"bench-{i}"
        t0 = time.perf_counter()
        cache.put(key, result)
        t1 = time.perf_counter()
        assert cache.get(key) is not None
        t2 = time.perf_counter()
        puts.append(t1 - t0)
        gets.append(t2 - t1)
    return {"cache_put_ms": 1e3 * statistics.median(puts), "cache_get_ms": 1e3 * statistics.median(gets),
            "cheap_eval_s": float(result.timings.get("total", float("nan")))}


def ray_throughput(out: Path, problem: Any, workers_list: list[int], trials: int) -> dict[str, Any]:
    import ray

    from autocompress.search import run_search
    from autocompress.search.ray_backend import init_ray

    # One local Ray for every worker count (its start-up is reported, not counted per trial). Ray
    # gives a raylet 30 s to register; on a loaded machine that can fail, so it is tried again.
    t0 = time.perf_counter()
    for attempt in range(3):
        try:
            init_ray(max(workers_list), None)
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a slow start
            print(f"  ray start failed ({str(exc)[:80]}); retrying", flush=True)
            ray.shutdown()
            if attempt == 2:
                raise
    rows: dict[str, Any] = {"ray_start_s": time.perf_counter() - t0}
    print(f"  local ray started in {rows['ray_start_s']:.0f} s", flush=True)
    try:
        _ray_rows(out, problem, workers_list, trials, rows, run_search)
    finally:
        ray.shutdown()
    return rows


def _ray_rows(out: Path, problem: Any, workers_list: list[int], trials: int, rows: dict[str, Any],
              run_search: Any) -> None:
    for workers in workers_list:
        stamps: list[float] = []
        t0 = time.perf_counter()

        def progress(p: Any, stamps: list[float] = stamps) -> None:
            if p.phase == "trial":
                stamps.append(time.perf_counter())

        spec = _spec(out / "ray" / f"w{workers}", backend="ray", workers=workers, trials=trials)
        res = run_search(spec, progress=progress, problem=problem)
        total = time.perf_counter() - t0
        evals = []
        for line in (spec.run_dir / "trials.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("final") and rec.get("status") == "ok":
                evals.append(float(rec.get("timings", {}).get("total", 0.0)))
        print("  ray", end="", flush=True)
        rows[str(workers)] = _rate_row(res.n_evaluated, stamps, evals, workers, total)


_WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from autocompress.search import SearchSpec, run_search
run_search(SearchSpec.from_dict(json.loads(sys.argv[1])))
"""


def local_throughput(out: Path, workers_list: list[int], trials: int) -> dict[str, Any]:
    """``workers`` processes sharing one journal study; rates from the study's completion times."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    rows: dict[str, Any] = {}
    for workers in workers_list:
        root = out / "local" / f"w{workers}"
        root.mkdir(parents=True)
        journal = root / "study.journal"
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(_spec(
            root / f"p{i}", trials=trials, storage=str(journal), study_name="scale").to_dict())],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(workers)]
        errors = [p.communicate()[1] for p in procs]
        total = time.perf_counter() - t0
        if any(p.returncode for p in procs):
            sys.exit("a worker failed:\n" + "\n".join(e[-2000:] for e in errors if e))
        study = optuna.load_study(study_name="scale",
                                  storage=JournalStorage(JournalFileBackend(str(journal))))
        done = sorted((t for t in study.get_trials() if t.user_attrs.get("status") == "ok"),
                      key=lambda t: t.datetime_complete)
        ends = [t.datetime_complete.timestamp() for t in done]
        evals = []
        for i in range(workers):
            log = root / f"p{i}" / "trials.jsonl"
            if not log.is_file():  # a worker that started after the others had taken every trial
                continue
            for line in log.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("final") and rec.get("status") == "ok":
                    evals.append(float(rec.get("timings", {}).get("total", 0.0)))
        rows[str(workers)] = _rate_row(len(done), ends, evals, workers, total)
    return rows


def study_growth(out: Path, template_journal: Path, sizes: list[int], repeats: int) -> dict[str, Any]:
    """What one proposal costs as the study grows: the admission reads the whole study.

    A study of ``n`` finished trials is built from copies of a real trial of the local run (same
    user attributes, distinct policy keys) on a journal file; then timed: a process joining it
    (the journal replayed), the search session's view (``study_view``, read before every admission
    decision; with the session's record memo warm, and without it), and one ask + tell.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import create_trial

    from autocompress.search.ledger import OptunaLedger
    from autocompress.search.session import study_view

    src = optuna.load_study(study_name="scale",
                            storage=JournalStorage(JournalFileBackend(str(template_journal))))
    template = next(t for t in src.get_trials() if t.user_attrs.get("status") == "ok")
    rows: dict[str, Any] = {}
    for n in sizes:
        journal = out / "growth" / f"n{n}.journal"
        journal.parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name="growth", directions=src.directions,
                                    storage=JournalStorage(JournalFileBackend(str(journal))),
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        trials = []
        for i in range(n):
            attrs = {**template.user_attrs, "policy_key": f"p{i}", "structure_key": f"s{i}"}
            trials.append(create_trial(params=template.params, distributions=template.distributions,
                                       values=template.values, user_attrs=attrs))
        study.add_trials(trials)
        load_s = _median_s(lambda j=journal: optuna.load_study(
            study_name="growth", storage=JournalStorage(JournalFileBackend(str(j)))).get_trials(deepcopy=False),
            repeats)
        ledger = OptunaLedger(study)
        cold_s = _median_s(lambda ledger=ledger: study_view(ledger, "bench"), repeats)
        memo: dict[int, Any] = {}
        study_view(ledger, "bench", memo)  # a running session has seen the earlier trials
        view_s = _median_s(lambda ledger=ledger, memo=memo: study_view(ledger, "bench", memo), repeats)

        def ask_tell(study: Any = study) -> None:
            trial = study.ask()
            trial.suggest_float("p", 0.0, 0.8)
            study.tell(trial, list(template.values))

        ask_tell_s = _median_s(ask_tell, repeats)
        rows[str(n)] = {"join_s": load_s, "view_cold_s": cold_s, "view_s": view_s, "ask_tell_s": ask_tell_s}
        print(f"  study of {n} trials: a process joining it {load_s:.2f} s, the session's view "
              f"{1e3 * view_s:.1f} ms per proposal ({1e3 * cold_s:.1f} ms without the record memo), "
              f"ask+tell {1e3 * ask_tell_s:.1f} ms", flush=True)
    return rows


def _rate_row(n: int, ends: list[float], evals: list[float], workers: int, total: float) -> dict[str, Any]:
    span = ends[-1] - ends[0] if len(ends) > 1 else float("nan")
    per_trial = span / (len(ends) - 1) if len(ends) > 1 else float("nan")
    mean_eval = statistics.mean(evals) if evals else float("nan")
    row = {"trials": n, "trials_per_min": 60.0 / per_trial, "total_s": total, "mean_eval_s": mean_eval,
           "overhead_per_trial_s": workers * per_trial - mean_eval}
    print(f"  workers={workers}: {row['trials_per_min']:.1f} trials/min, mean evaluation "
          f"{mean_eval:.3f} s, overhead {row['overhead_per_trial_s']:.2f} s per trial "
          f"({total:.0f} s in all, process start-up included)", flush=True)
    return row


def view_fit(growth: dict[str, Any]) -> tuple[float, float]:
    """Least-squares ``view(k) = a + b·k`` (seconds) through the measured study sizes."""
    pts = [(float(n), float(r["view_s"])) for n, r in growth.items()]
    if len(pts) < 2:
        return (pts[0][1], 0.0) if pts else (0.0, 0.0)
    mx = statistics.mean(x for x, _ in pts)
    my = statistics.mean(y for _, y in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return max(my - b * mx, 0.0), max(b, 0.0)


def model(overheads: dict[str, float], rates: dict[str, Any], eval_s: float, candidates: int,
          gpus_per_node: int, nodes: list[int], growth: dict[str, Any] | None = None) -> dict[str, Any]:
    """``throughput(W, k) = min(W / (E + o), 1 / (s + view(k)))`` summed over the sweep's trials.

    ``rates``: the 1-worker row of the local or Ray measurement. ``view(k)``: the admission's read
    of a study of ``k`` trials (``growth``, fitted linearly), paid serially by the driver that
    admits every trial, so the driver's limit falls as the study grows.
    """
    one = rates.get("1", {})
    o = max(float(one.get("overhead_per_trial_s", 0.0)), 0.0)
    # The serial share of a trial (Tune's driver loop and the searcher, or the study's storage):
    # the 1-worker overhead is paid partly in parallel (each worker's own bookkeeping), partly
    # serially; taking all of it plus one storage round trip as serial gives the earliest
    # bottleneck, an upper bound on what the driver costs.
    s = o + overheads["journal_ask_tell_ms"] / 1e3
    a, b = view_fit(growth or {})
    rows = []
    for n in nodes:
        workers = n * gpus_per_node
        gpu_s = (eval_s + o) / workers  # seconds per trial when the GPUs set the pace
        seconds, driver_from = 0.0, None
        for k in range(candidates):
            serial = s + a + b * k
            if serial > gpu_s and driver_from is None:
                driver_from = k
            seconds += max(gpu_s, serial)
        bound = ("GPUs" if driver_from is None else "driver (scheduler + storage)" if driver_from == 0
                 else f"GPUs, then the driver from trial {driver_from:,}")
        rows.append({"nodes": n, "gpus": workers, "trials_per_hour": candidates / seconds * 3600,
                     "hours": seconds / 3600, "bound": bound, "driver_from": driver_from})
    return {"E_s": eval_s, "o_s": o, "s_s": s, "view_a_s": a, "view_b_s": b,
            "saturating_gpus": (eval_s + o) / s, "saturating_gpus_at_end": (eval_s + o) / (s + a + b * candidates),
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--trials", type=int, default=16, help="Ray trials per worker count")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the set-up timings")
    ap.add_argument("--round-trips", type=int, default=50, help="storage and cache round trips timed")
    ap.add_argument("--resnet50-eval-s", type=float, default=30.0,
                    help="assumed seconds to evaluate one ResNet-50/ImageNet candidate on one GPU")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--candidates", type=int, default=10_000)
    ap.add_argument("--study-sizes", type=int, nargs="+", default=[100, 1_000, 10_000],
                    help="finished trials in the study when one proposal's admission is timed")
    ap.add_argument("--ray", action="store_true", help="also measure the worker counts as Ray Tune trials")
    ap.add_argument("--tiny", action="store_true", help="a short run (1 and 2 workers, 3 trials, few repeats)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-scale"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.tiny:
        args.workers, args.trials, args.repeats, args.round_trips = [1, 2], 3, 1, 3
        args.study_sizes = [20, 200]
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"--out {args.out} is not empty; choose a fresh directory")
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start",
          flush=True)
    setup, problem = setup_costs(args.out, args.repeats)
    print(f"set-up per worker: build_problem {setup['build_problem_s']:.2f} s, unpickle the shipped "
          f"problem {1e3 * setup['unpickle_shipped_s']:.1f} ms ({setup['shipped_bytes'] / 1e3:.0f} kB)", flush=True)
    storage = storage_round_trip(args.out / "storage", args.round_trips)
    print(f"storage ask+tell: journal {storage['journal_ask_tell_ms']:.1f} ms, sqlite "
          f"{storage['sqlite_ask_tell_ms']:.1f} ms", flush=True)
    cache = cache_round_trip(args.out, problem, args.round_trips)
    print(f"evaluation cache: put {cache['cache_put_ms']:.1f} ms, get {cache['cache_get_ms']:.1f} ms; "
          f"one cheap evaluation {cache['cheap_eval_s']:.3f} s", flush=True)
    overheads = {**setup, **storage, **cache}
    print(f"local workers sharing one journal study, {args.trials} trials each run:", flush=True)
    local = local_throughput(args.out, args.workers, args.trials)
    ray = ray_throughput(args.out, problem, args.workers, args.trials) if args.ray else {}
    print("the study growing (admission reads every trial):", flush=True)
    growth = study_growth(args.out, args.out / "local" / f"w{args.workers[0]}" / "study.journal",
                          args.study_sizes, args.repeats)
    m = model(overheads, ray or local, args.resnet50_eval_s, args.candidates, args.gpus_per_node, args.nodes,
              growth)
    print(f"model: E = {m['E_s']:.0f} s (assumed), o = {m['o_s']:.2f} s, s = {m['s_s']:.2f} s per trial at "
          f"the driver plus the view, {1e3 * m['view_a_s']:.1f} ms + {1e6 * m['view_b_s']:.1f} µs per trial "
          f"in the study; the driver saturates at ~{m['saturating_gpus']:.0f} concurrent GPU trials on an "
          f"empty study, ~{m['saturating_gpus_at_end']:.0f} at {args.candidates} trials", flush=True)
    for r in m["rows"]:
        print(f"  {r['nodes']:3d} nodes x {args.gpus_per_node} GPUs: {r['trials_per_hour']:8.0f} trials/h, "
              f"{args.candidates} candidates in {r['hours']:6.1f} h (bound by {r['bound']})", flush=True)
    load_end = os.getloadavg()
    print(f"load average {load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f} at the end; "
          f"{time.perf_counter() - t_start:.0f} s in all", flush=True)
    report = {"overheads": overheads, "local": local, "ray": ray, "growth": growth, "model": m, "load_start": load, "load_end": load_end,
              "cpus": os.cpu_count(), "seconds": time.perf_counter() - t_start}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
