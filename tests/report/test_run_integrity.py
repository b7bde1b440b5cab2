"""Damaged run files: torn or truncated logs, broken pareto.json, disk full while reporting.

A report must never show numbers that are not on record, never die with a traceback on a
damaged file, and never leave a half-written file where a whole one was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import resource
import signal
from pathlib import Path

import pytest
from _cli_checks import assert_one_line_error
from click.testing import CliRunner, Result

from autocompress.cli import main
from autocompress.errors import UserInputError
from autocompress.report import load_run, write_report

pytestmark = pytest.mark.timeout(120)


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "160"})


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content (to prove nothing was touched)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- trials.jsonl -------------------------------------------------------------------------------


def test_torn_last_line_is_skipped_with_a_warning(fake_run: Path) -> None:
    # The fixture's log ends in a half-written record, as a search killed mid-write leaves it.
    assert not (fake_run / "trials.jsonl").read_text().endswith("\n")
    res = _cli("report", fake_run)
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "last line" in warnings[0] and "ignored" in warnings[0]
    assert (fake_run / "pareto.html").is_file()


def test_truncated_log_missing_front_points_is_refused(fake_run: Path) -> None:
    run = load_run(fake_run)
    log = fake_run / "trials.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    # Cut the log in the middle of the line of the last front point, as a truncated copy would.
    last_front = max(i for i, ln in enumerate(lines)
                     if ln.endswith("\n") and str(json.loads(ln)["id"]) in run.front_ids)
    log.write_text("".join(lines[:last_front]) + lines[last_front][:40])
    lost = [pid for pid in run.front_ids
            if pid not in {str(json.loads(ln)["id"]) for ln in lines[:last_front]}]
    assert lost
    with pytest.raises(UserInputError, match="does not hold") as err:
        load_run(fake_run)
    assert all(pid in str(err.value) for pid in lost) and "\n" not in str(err.value)
    before = _tree(fake_run)
    line = assert_one_line_error(_cli("report", fake_run), "pareto.json", "truncated")
    assert f"({', '.join(lost)})" in line
    assert _tree(fake_run) == before  # no pareto.png / pareto.html written from a damaged run
    assert_one_line_error(_cli("show", fake_run, "--point", run.front_ids[0]), "truncated")


def test_missing_log_with_a_front_is_refused(fake_run: Path) -> None:
    (fake_run / "trials.jsonl").unlink()
    with pytest.raises(UserInputError, match="has no trials.jsonl"):
        load_run(fake_run)


def test_front_point_with_another_policy_is_refused(fake_run: Path) -> None:
    pareto = json.loads((fake_run / "pareto.json").read_text())
    a, b = pareto["points"][0], pareto["points"][1]
    a["policy"], b["policy"] = b["policy"], a["policy"]
    (fake_run / "pareto.json").write_text(json.dumps(pareto))
    with pytest.raises(UserInputError, match="different policy.*different runs"):
        load_run(fake_run)


def test_shared_storage_front_points_are_a_warning(fake_run: Path) -> None:
    """With a study shared by several run directories, other processes' points are legitimate."""
    spec = json.loads((fake_run / "spec.json").read_text())
    spec["storage"] = "sqlite:////tmp/shared-study.db"
    (fake_run / "spec.json").write_text(json.dumps(spec))
    run = load_run(fake_run)
    keep = run.front_ids[1:]
    log = fake_run / "trials.jsonl"
    log.write_text("".join(ln for ln in log.read_text().splitlines(keepends=True)
                           if ln.endswith("\n") and str(json.loads(ln)["id"]) != run.front_ids[0]))
    run = load_run(fake_run)
    assert run.front_ids[1:] == keep
    assert len(run.warnings) == 1 and "shared storage" in run.warnings[0]
    assert run.front_ids[0] in run.warnings[0]


def test_damage_before_the_last_line_is_an_error(fake_run: Path) -> None:
    log = fake_run / "trials.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[3] = '{"id": 3, "poli\n'
    log.write_text("".join(lines))
    with pytest.raises(UserInputError, match="line 4 is not valid JSON"):
        load_run(fake_run)


# -- pareto.json --------------------------------------------------------------------------------

BROKEN_PARETO = {
    "empty": "",
    "truncated": None,  # the real file cut in half
    "not_an_object": "[1, 2]",
    "points_not_a_list": '{"points": 3}',
    "point_without_policy": '{"points": [{"id": 1, "metrics": {"acc": 0.5}}]}',
    "garbage_policy": '{"points": [{"id": 1, "policy": {"_type": "CompressionPolicy", "_data": 5}}]}',
    "binary": b"\xff\xfe\x00garbage",
}


def _break(run: Path, kind: str) -> None:
    content = BROKEN_PARETO[kind]
    path = run / "pareto.json"
    if content is None:
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("kind", sorted(BROKEN_PARETO))
@pytest.mark.parametrize("command", [
    ("show", "--point", "knee"), ("show", "--point", "1"), ("finetune", "--point", "best"),
    ("finetune", "--point", "1", "--epochs", "1"), ("export", "--point", "knee"), ("report",),
])
def test_broken_pareto_json_is_one_line(fake_run: Path, kind: str, command: tuple[str, ...]) -> None:
    _break(fake_run, kind)
    before = _tree(fake_run)
    res = _cli(command[0], fake_run, *command[1:])
    assert_one_line_error(res, "pareto.json")
    assert _tree(fake_run) == before


def test_resolve_point_aliases(fake_run: Path) -> None:
    from autocompress.report.run import read_pareto, resolve_point

    run = load_run(fake_run)
    assert resolve_point(fake_run, "knee") == run.knee_id
    best = max(run.front, key=lambda p: p.metrics["acc"])
    assert resolve_point(fake_run, "best") == best.id
    assert resolve_point(fake_run, " 7 ") == "7"  # ids pass through; RunRecord.point checks them
    pareto = read_pareto(fake_run)
    pareto["points"] = []
    (fake_run / "pareto.json").write_text(json.dumps(pareto))
    with pytest.raises(UserInputError, match="front of .* is empty"):
        resolve_point(fake_run, "knee")
    with pytest.raises(UserInputError, match="does not exist"):
        resolve_point(fake_run / "nope", "best")


# -- writing --------------------------------------------------------------------------------------


def test_disk_full_report_keeps_the_previous_files(fake_run: Path) -> None:
    """A real write failure (RLIMIT_FSIZE: the kernel refuses to grow a file past 1 MB, as on a
    full disk) half-way through pareto.html: the previous report survives, no temp file is left."""
    write_report(fake_run)
    before = {n: (fake_run / n).read_bytes() for n in ("pareto.png", "pareto.html")}
    assert len(before["pareto.html"]) > 1_000_000
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))
    try:
        with pytest.raises(OSError) as err:
            write_report(fake_run)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert err.value.errno == errno.EFBIG
    assert (fake_run / "pareto.html").read_bytes() == before["pareto.html"]
    assert not [p.name for p in fake_run.iterdir() if p.name.endswith(".tmp")]


def test_failed_png_write_keeps_the_previous_file(fake_run: Path, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    write_report(fake_run)
    before = (fake_run / "pareto.png").read_bytes()
    from matplotlib.figure import Figure

    def half_then_enospc(self: Figure, fname: str | Path, **kwargs: object) -> None:
        Path(fname).write_bytes(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_enospc)
    with pytest.raises(OSError, match="No space left"):
        write_report(fake_run)
    assert (fake_run / "pareto.png").read_bytes() == before
    assert not [p.name for p in fake_run.iterdir() if p.name.endswith(".tmp")]


def test_report_files_keep_the_usual_permissions(fake_run: Path) -> None:
    import os

    paths = write_report(fake_run)
    umask = os.umask(0)
    os.umask(umask)
    assert paths.html.stat().st_mode & 0o777 == 0o666 & ~umask


def test_export_out_into_a_missing_directory_is_refused(fake_run: Path, tmp_path: Path) -> None:
    pid = load_run(fake_run).front_ids[0]
    target = tmp_path / "no" / "such" / "dir" / "x.onnx"
    before = _tree(tmp_path)
    assert_one_line_error(_cli("export", fake_run, "--point", pid, "--out", target),
                           "does not exist")
    assert not (tmp_path / "no").exists() and _tree(tmp_path) == before
    from autocompress.report.export import export_point

    with pytest.raises(UserInputError, match="directory .* does not exist"):
        export_point(fake_run, pid, "onnx", target)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="not a directory"):
        export_point(fake_run, pid, "onnx", tmp_path / "file" / "x.onnx")
