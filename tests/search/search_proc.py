"""A search in its own process (for the kill/resume and shared-study tests).

Usage: ``python search_proc.py SPEC_JSON [BARRIER_DIR N [STAGES]]``. With a barrier, the process
waits at each of ``STAGES`` (comma-separated, default ``ready``) until ``N`` processes got there:
``ready`` after setup (they really run concurrently), ``first`` after its first recorded candidate
(a process whose evaluations are cache hits cannot take every candidate before a slower one, such
as a Ray driver, has its first).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from autocompress.search import SearchSpec, run_search


def wait_for(barrier: Path, stage: str, n: int, timeout_s: float = 120) -> None:
    """Mark this process at ``stage`` and wait until ``n`` processes are (or ``timeout_s``)."""
    (barrier / f"{stage}-{os.getpid()}").touch()
    deadline = time.time() + timeout_s
    while len(list(barrier.glob(f"{stage}-*"))) < n and time.time() < deadline:
        time.sleep(0.05)


def main() -> None:
    spec = SearchSpec.from_dict(json.loads(sys.argv[1]))
    barrier = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    stages = set(sys.argv[4].split(",")) if len(sys.argv) > 4 else {"ready"}
    first = [True]

    def progress(p) -> None:  # noqa: ANN001
        if barrier is None:
            return
        if p.phase == "start" and "ready" in stages:
            wait_for(barrier, "ready", n)
        elif p.phase == "trial" and first[0] and "first" in stages:
            first[0] = False
            wait_for(barrier, "first", n)

    try:
        result = run_search(spec, progress)
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True}))
        sys.exit(130)
    print(json.dumps({"n_evaluated": result.n_evaluated, "stop": result.stop_reason}))


if __name__ == "__main__":
    main()
