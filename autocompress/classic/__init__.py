"""Classic ML models under the same search engine (survey §4): scikit-learn tree ensembles
(random forest, extra trees, gradient boosting, a decision tree), linear models, RBF SVMs, kNN.

Keeps torch out of its own imports; the engine's policy and searcher types it reuses are
imported when a search runs.

Example:
    >>> from autocompress.classic import make_spec, run_classic_search
    >>> spec = make_spec(model="sklearn:random_forest:20", data="sklearn:breast_cancer",
    ...                  budgets=["size=50%"], trials=8, out="runs/rf")  # doctest: +SKIP
    >>> result = run_classic_search(spec)  # doctest: +SKIP
"""

from __future__ import annotations

from autocompress.classic.data import BUNDLED, TabularSplits, load_tabular
from autocompress.classic.dense import PackedDense, dense_to_onnx, load_artefact
from autocompress.classic.dense_space import DenseSpace
from autocompress.classic.export import export_classic_point, forest_to_onnx
from autocompress.classic.forest import (
    ForestArrays,
    PackedForest,
    compress_forest,
    forest_from_sklearn,
    packed_size,
)
from autocompress.classic.models import create_classic_model, is_classic_model
from autocompress.classic.search import (
    STRATEGIES,
    ClassicProblem,
    ClassicResult,
    ClassicSpec,
    evaluate_policy,
    make_spec,
    read_classic_run,
    run_classic_search,
)
from autocompress.classic.space import ForestSpace

__all__ = [
    "BUNDLED",
    "STRATEGIES",
    "ClassicProblem",
    "ClassicResult",
    "ClassicSpec",
    "DenseSpace",
    "ForestArrays",
    "ForestSpace",
    "PackedDense",
    "PackedForest",
    "TabularSplits",
    "compress_forest",
    "create_classic_model",
    "dense_to_onnx",
    "evaluate_policy",
    "export_classic_point",
    "forest_from_sklearn",
    "forest_to_onnx",
    "is_classic_model",
    "load_artefact",
    "load_tabular",
    "make_spec",
    "packed_size",
    "read_classic_run",
    "run_classic_search",
]
