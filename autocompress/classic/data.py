"""Tabular data for classic models: bundled scikit-learn sets and CSV files, split by a seed.

Nothing is downloaded: ``sklearn:breast_cancer``, ``sklearn:wine``, ``sklearn:iris``,
``sklearn:digits`` and the regression set ``sklearn:diabetes`` ship inside the scikit-learn wheel; ``csv:PATH`` reads numeric feature
columns and one target column (any labels; they are encoded as class indices 0..K-1).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autocompress.errors import UserInputError

#: Bundled data set name -> scikit-learn loader function name.
BUNDLED: dict[str, str] = {
    "breast_cancer": "load_breast_cancer",
    "wine": "load_wine",
    "iris": "load_iris",
    "digits": "load_digits",
    "diabetes": "load_diabetes",
}
#: Bundled sets whose target is a number (quality metric R² instead of accuracy).
REGRESSION = ("diabetes",)

#: Shares of the samples in the train / validation / test splits.
SPLIT = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class TabularSplits:
    """Seeded, stratified train / validation / test splits (float32 features, int64 labels).

    The search scores candidates on ``val``; ``test`` is only for final figures.
    """

    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    feature_names: tuple[str, ...]

    @property
    def regression(self) -> bool:
        """True when the target is a number (no classes)."""
        return not self.classes

    def score(self, pred: np.ndarray, y: np.ndarray) -> float:
        """The quality metric: accuracy, or R² for a numeric target."""
        pred, y = np.asarray(pred), np.asarray(y)
        if not self.regression:
            return float((pred == y).mean())
        total = float(((y - y.mean()) ** 2).sum())
        return 1.0 - float(((y - pred) ** 2).sum()) / max(total, 1e-300)

    @property
    def n_features(self) -> int:
        """Feature columns."""
        return int(self.x_train.shape[1])

    def fingerprint(self) -> dict[str, int]:
        """Sample counts per split (recorded in ``spec.json``)."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def check_data_name(data: str, target: str | None = None) -> None:
    """Raise ``UserInputError`` for a data name that is neither bundled nor an existing CSV file.

    Called before anything is written, so a bad name leaves no run directory behind.
    """
    if data.startswith("sklearn:"):
        name = data.split(":", 1)[1]
        if name not in BUNDLED:
            raise UserInputError(f"unknown data {data!r}; allowed: "
                                 f"{', '.join('sklearn:' + n for n in BUNDLED)}, csv:PATH")
        if target is not None:
            raise UserInputError(f"--target {target!r} is only for csv:PATH data (got {data!r})")
        return
    if data.startswith("csv:"):
        path = Path(data[4:]).expanduser()
        if not path.is_file():
            raise UserInputError(f"--data {data!r}: no such file {str(path)!r}")
        if not target:
            raise UserInputError(f"--data {data!r} needs --target COLUMN (the label column)")
        return
    raise UserInputError(f"unknown data {data!r}; allowed: "
                         f"{', '.join('sklearn:' + n for n in BUNDLED)}, csv:PATH --target COL")


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise UserInputError(f"csv:{path}: needs a header line and at least one data row")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise UserInputError(f"--target {target!r} is not a column of {str(path)!r}; "
                             f"columns: {', '.join(header)}")
    t = header.index(target)
    names = tuple(h for i, h in enumerate(header) if i != t)
    x = np.empty((len(rows) - 1, len(names)), dtype=np.float64)
    labels = []
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserInputError(f"{str(path)!r} line {r}: {len(row)} fields, header has {len(header)}")
        feats = [v for i, v in enumerate(row) if i != t]
        try:
            x[r - 2] = [float(v) for v in feats]
        except ValueError:
            raise UserInputError(f"{str(path)!r} line {r}: a feature is not a number; "
                                 "allowed: numeric feature columns") from None
        labels.append(row[t].strip())
    return x, np.asarray(labels), names


def load_tabular(data: str, *, target: str | None = None, seed: int = 0) -> TabularSplits:
    """Load ``data`` and split it 60/20/20 (stratified, shuffled by ``seed``).

    Args:
        data: ``sklearn:NAME`` (see ``BUNDLED``) or ``csv:PATH``.
        target: the label column of a CSV file.
        seed: the split's shuffle seed.
    """
    from sklearn.model_selection import train_test_split

    check_data_name(data, target)
    if data.startswith("sklearn:"):
        import sklearn.datasets

        name = data.split(":", 1)[1]
        bunch = getattr(sklearn.datasets, BUNDLED[name])()
        x = np.asarray(bunch.data, dtype=np.float64)
        y_raw = np.asarray(bunch.target)
        names = tuple(str(n) for n in getattr(bunch, "feature_names", range(x.shape[1])))
        if name in REGRESSION:  # unstratified split of a numeric target
            x = x.astype(np.float32)
            yf = y_raw.astype(np.float64)
            x_train, x_rest, y_train, y_rest = train_test_split(
                x, yf, train_size=SPLIT[0], random_state=seed)
            x_val, x_test, y_val, y_test = train_test_split(
                x_rest, y_rest, train_size=SPLIT[1] / (SPLIT[1] + SPLIT[2]), random_state=seed)
            return TabularSplits(data, x_train, y_train, x_val, y_val, x_test, y_test, (), names)
        labels = tuple(str(n) for n in getattr(bunch, "target_names", sorted(set(y_raw))))
        y = y_raw.astype(np.int64)
    else:
        assert target is not None
        x, y_text, names = _read_csv(Path(data[4:]).expanduser(), target)
        labels_arr, y = np.unique(y_text, return_inverse=True)
        labels = tuple(str(v) for v in labels_arr)
        y = y.astype(np.int64)
    counts = np.bincount(y)
    if len(counts) < 2 or counts.min() < 5:
        raise UserInputError(f"--data {data!r}: every class needs >= 5 samples and >= 2 classes "
                             f"(class counts {counts.tolist()})")
    x = x.astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, train_size=SPLIT[0], random_state=seed, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, train_size=SPLIT[1] / (SPLIT[1] + SPLIT[2]), random_state=seed,
        stratify=y_rest)
    return TabularSplits(data, x_train, y_train, x_val, y_val, x_test, y_test, labels, names)
