"""A search in its own process (for the kill/resume and shared-study tests).

Usage: ``python search_proc.py SPEC_JSON [BARRIER_DIR N]``. With a barrier, the process waits
after setup until ``N`` processes have reached the loop, so that they really run concurrently.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from autocompress.search import SearchSpec, run_search


def main() -> None:
    spec = SearchSpec.from_dict(json.loads(sys.argv[1]))
    barrier = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1

    def progress(p) -> None:  # noqa: ANN001
        if barrier is not None and p.phase == "start":
            (barrier / f"ready-{os.getpid()}").touch()
            deadline = time.time() + 120
            while len(list(barrier.glob("ready-*"))) < n and time.time() < deadline:
                time.sleep(0.05)

    try:
        result = run_search(spec, progress)
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True}))
        sys.exit(130)
    print(json.dumps({"n_evaluated": result.n_evaluated, "stop": result.stop_reason}))


if __name__ == "__main__":
    main()
