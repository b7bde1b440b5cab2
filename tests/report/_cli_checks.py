"""Shared assertion for the report tests: a refused command is one ``error:`` line, exit 2."""

from __future__ import annotations

from click.testing import Result


def assert_one_line_error(res: Result, *needles: str) -> str:
    """Exit status 2, exactly one ``error:`` line on stderr (no traceback) containing ``needles``."""
    assert res.exit_code == 2, (res.exit_code, res.stdout[-2000:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
