"""Classic models: scikit-learn tree ensembles trained here from a seed, or a trusted joblib file.

``sklearn:random_forest`` / ``sklearn:extra_trees`` (100 trees; ``sklearn:random_forest:N`` for N
trees), ``sklearn:gradient_boosting`` (100 stages; ``:N`` for N), ``sklearn:decision_tree`` and,
after a ``StandardScaler``, ``sklearn:logistic_regression``, ``sklearn:linear_svc``, ``sklearn:svc``
(RBF kernel) and ``sklearn:knn`` (5 neighbours) are fitted on the training split with ``random_state=seed``.
``sklearn:PATH.joblib`` loads a fitted classifier from disk: unpickling runs code from the file,
so it is refused unless the caller passes ``trust_pickle=True`` (``--trust-pickle``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autocompress.classic.data import TabularSplits
from autocompress.errors import UserInputError

#: Model factory name -> (scikit-learn class path, default tree count or None).
FACTORIES: dict[str, tuple[str, int | None]] = {
    "random_forest": ("sklearn.ensemble:RandomForestClassifier", 100),
    "extra_trees": ("sklearn.ensemble:ExtraTreesClassifier", 100),
    "gradient_boosting": ("sklearn.ensemble:GradientBoostingClassifier", 100),
    "decision_tree": ("sklearn.tree:DecisionTreeClassifier", None),
    "logistic_regression": ("sklearn.linear_model:LogisticRegression", None),
    "linear_svc": ("sklearn.svm:LinearSVC", None),
    "svc": ("sklearn.svm:SVC", None),
    "knn": ("sklearn.neighbors:KNeighborsClassifier", None),
}
#: Regression counterparts of the tree factories (used on a numeric target).
REGRESSORS: dict[str, str] = {
    "random_forest": "sklearn.ensemble:RandomForestRegressor",
    "extra_trees": "sklearn.ensemble:ExtraTreesRegressor",
    "gradient_boosting": "sklearn.ensemble:GradientBoostingRegressor",
    "decision_tree": "sklearn.tree:DecisionTreeRegressor",
}
#: Factories fitted after a StandardScaler (distance- and margin-based models).
SCALED = ("logistic_regression", "linear_svc", "svc", "knn")


def is_classic_model(model: str | None) -> bool:
    """True for ``sklearn:`` model names (they go to the classic engine)."""
    return bool(model) and str(model).startswith("sklearn:")


def _parse(model: str) -> tuple[str, int | None, Path | None]:
    rest = model.split(":", 1)[1] if model.startswith("sklearn:") else ""
    if rest.endswith(".joblib"):
        return "joblib", None, Path(rest).expanduser()
    name, _, count = rest.partition(":")
    allowed = ", ".join(f"sklearn:{n}" for n in FACTORIES) + ", sklearn:NAME:N, sklearn:PATH.joblib"
    if name not in FACTORIES:
        raise UserInputError(f"unknown model {model!r}; allowed: {allowed}")
    default = FACTORIES[name][1]
    if count:
        if default is None or not count.isdigit() or not 1 <= int(count) <= 10_000:
            raise UserInputError(f"model {model!r}: tree count {count!r}; allowed: an integer "
                                 "1..10000 after random_forest:, extra_trees: or gradient_boosting:")
        return name, int(count), None
    return name, default, None


def check_model_name(model: str, *, trust_pickle: bool = False) -> None:
    """Raise ``UserInputError`` for an unknown model, a missing joblib file, or a joblib file
    without ``trust_pickle`` (checked before anything is written)."""
    kind, _, path = _parse(model)
    if kind == "joblib":
        assert path is not None
        if not trust_pickle:
            raise UserInputError(f"--model {model!r} is a pickle: loading it runs code from the file; "
                                 "pass --trust-pickle if you trust its source")
        if not path.is_file():
            raise UserInputError(f"--model {model!r}: no such file {str(path)!r}")


def create_classic_model(model: str, splits: TabularSplits, *, seed: int = 0,
                         trust_pickle: bool = False) -> Any:
    """A fitted scikit-learn classifier for ``model`` (trained on ``splits``' train split).

    A joblib model must predict the data's classes: either indices ``0..K-1`` or the data's class
    labels in sorted order.
    """
    import importlib

    check_model_name(model, trust_pickle=trust_pickle)
    kind, count, path = _parse(model)
    if kind == "joblib":
        import joblib

        assert path is not None
        est = joblib.load(path)  # trusted explicitly by the caller (--trust-pickle)
        if splits.regression:
            if hasattr(est, "classes_"):
                raise UserInputError(f"model {model!r} is a classifier; the data {splits.source!r} "
                                     "has a numeric target (allowed: a tree-ensemble regressor)")
            return est
        classes = [str(c) for c in getattr(est, "classes_", [])]
        k = len(splits.classes)
        if classes != [str(i) for i in range(k)] and classes != list(splits.classes):
            raise UserInputError(f"model {model!r} predicts classes {classes[:10]}; the data has "
                                 f"{k} classes {list(splits.classes)[:10]}")
        if getattr(est, "n_features_in_", splits.n_features) != splits.n_features:
            raise UserInputError(f"model {model!r} takes {est.n_features_in_} features; the data "
                                 f"has {splits.n_features}")
        return est
    path_name = FACTORIES[kind][0]
    if splits.regression:
        if kind not in REGRESSORS:
            raise UserInputError(f"model {model!r} does not fit a numeric target ({splits.source}); "
                                 f"allowed: {', '.join('sklearn:' + n for n in REGRESSORS)}")
        path_name = REGRESSORS[kind]
    module, _, cls_name = path_name.partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    kwargs: dict[str, Any] = {} if kind == "knn" else {"random_state": seed}
    if kind == "logistic_regression":
        kwargs["max_iter"] = 2000
    if count is not None:
        kwargs.update(n_estimators=count)
        if kind != "gradient_boosting":
            kwargs.update(n_jobs=1)
    est = cls(**kwargs)
    if kind in SCALED:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        est = make_pipeline(StandardScaler(), est)
    est.fit(splits.x_train, splits.y_train)
    assert splits.regression or np.array_equal(est.classes_, np.arange(len(splits.classes)))
    return est
