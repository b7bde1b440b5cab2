"""The run directory: its file names, and the reading and writing of its files.

A search writes one directory ``RUN/``; ``report``, ``show``, ``finetune``, ``export`` and the
classic-ML search read it. Every name below is spelled here once, so a reader and the writer
cannot drift apart:

* ``spec.json``: the search spec (flat ``SearchSpec.to_dict()`` plus ``_schema_version``,
  ``_identity`` and ``num_classes``); a directory holding a different spec is refused.
* ``ledger.jsonl``: the ledger of trials (``search.file_ledger``), the default for strategies
  that do not sample from Optuna; ``study.journal`` or ``study.db``: the Optuna study instead
  (Optuna samplers, ``--storage journal`` / ``sqlite``); none of them when ``--storage`` names a
  database shared by several machines (``postgresql://...``) or a journal file elsewhere. A run
  keeps the ledger it started with.
* ``trials.jsonl``: one JSON line per evaluation, appended under an exclusive lock and fsync'd per
  line (``TrialLog``), so a kill leaves at most one torn last line.
* ``base.json``: the uncompressed model's metrics; ``pareto.json``: the front.
* ``.lock``: every process searching in ``RUN`` holds a shared ``flock`` on it.
* ``test_top1.json``: test-split accuracies of front points, cached by the report.
* ``finetune/point-<id>[-n].json`` + ``.pt``: fine-tune records and weights.
* ``export/point-<id>.<ext>`` and ``export/exports.jsonl``: exported files and their log.
* ``pareto.png`` / ``pareto.html``: the report's plots.

Writes are atomic (a temporary file in the same directory, fsync'd, then renamed), so a reader
sees the old file or the new one, never half of one (``_files``). Reading is checked: an empty,
truncated or malformed file is a one-line ``UserInputError``. ``read_run`` (``_read``) gives the
whole run as a ``RunRecord`` (``_record``); ``read_pareto`` / ``resolve_point`` (``_pareto``),
``latest_finetune`` (``_finetune``) and ``read_spec_dict`` (``_read``) read one file each; a
classic-ML run (``"kind": "classic"``) is read as plain JSON by ``read_classic_run`` /
``resolve_classic_point`` (``_classic``).

``Candidate`` is the one record of an evaluated candidate: the search builds it from its study
(``search.records.record_from_trial``; ``TrialRecord`` is its name there) and ``read_run`` from
``trials.jsonl`` and ``pareto.json``.

This package imports only the standard library, ``autocompress.errors`` and
``autocompress.metrics`` (itself standard library only) at run time: the policy type is named for
type checkers only, and ``read_run`` builds policies with the reader its caller passes
(``report.run.load_run`` passes the compression policy's). It sits just above compression and
below search and report (docs/design.md, "Layers").
"""

from autocompress.rundir._classic import CLASSIC_KIND, read_classic_run, resolve_classic_point
from autocompress.rundir._files import (
    BASE_FILE,
    EXPORT_DIR,
    EXPORT_LOG,
    FINETUNE_DIR,
    JOURNAL_FILE,
    LEDGER_FILE,
    LOCK_FILE,
    PARETO_FILE,
    PARETO_HTML,
    PARETO_PNG,
    RUN_SCHEMA_VERSION,
    SPEC_FILE,
    SQLITE_FILE,
    TEST_CACHE_FILE,
    TRIAL_RECORD_VERSION,
    TRIALS_FILE,
    Candidate,
    TrialLog,
    atomic_path,
    atomic_write_text,
    jsonable,
    read_json,
    write_bytes_atomic,
    write_text_atomic,
)
from autocompress.rundir._finetune import finetune_record_files, latest_finetune, safe_point_name
from autocompress.rundir._pareto import POINT_ALIASES, read_pareto, resolve_point
from autocompress.rundir._read import (
    parse_budget_value,
    read_run,
    read_spec_dict,
    read_test_cache,
    recorded_checkpoint,
)
from autocompress.rundir._record import COST_METRICS, MAXIMIZED, PolicyReader, RunRecord

__all__ = [
    "BASE_FILE",
    "CLASSIC_KIND",
    "COST_METRICS",
    "EXPORT_DIR",
    "EXPORT_LOG",
    "FINETUNE_DIR",
    "JOURNAL_FILE",
    "LEDGER_FILE",
    "LOCK_FILE",
    "MAXIMIZED",
    "PARETO_FILE",
    "PARETO_HTML",
    "PARETO_PNG",
    "POINT_ALIASES",
    "RUN_SCHEMA_VERSION",
    "SPEC_FILE",
    "SQLITE_FILE",
    "TEST_CACHE_FILE",
    "TRIALS_FILE",
    "TRIAL_RECORD_VERSION",
    "Candidate",
    "PolicyReader",
    "RunRecord",
    "TrialLog",
    "atomic_path",
    "atomic_write_text",
    "finetune_record_files",
    "jsonable",
    "latest_finetune",
    "parse_budget_value",
    "read_classic_run",
    "read_json",
    "read_pareto",
    "read_run",
    "read_spec_dict",
    "read_test_cache",
    "recorded_checkpoint",
    "resolve_classic_point",
    "resolve_point",
    "safe_point_name",
    "write_bytes_atomic",
    "write_text_atomic",
]
