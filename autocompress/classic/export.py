"""ONNX export of a compressed forest, checked against the artefact it comes from.

The ONNX graph (``ai.onnx.ml`` ``TreeEnsembleClassifier``, built with ``onnx.helper``) holds the
artefact's decoded thresholds (float32, ``BRANCH_LEQ``) and its leaf weights: integer codes at
quantized leaf bits (so class scores are exact integer sums, as in the artefact) or float32
fractions. Outputs: ``label`` (int64, argmax of the scores) and ``probabilities`` (scores
divided by the artefact's scale). A boosted artefact becomes a ``TreeEnsembleRegressor`` (one target
per output, leaf codes or float32 values summed in tree order) followed by the artefact's own
float32 affine step and offset, then ``label`` (raw > 0 for two classes, else argmax) and
``probabilities`` (sigmoid / softmax). skl2onnx is not used: it converts scikit-learn estimators,
and the compressed forest is not one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autocompress.classic.forest import PackedForest
from autocompress.errors import CheckFailedError, UserInputError
from autocompress.rundir import read_classic_run, resolve_classic_point

ML_OPSET = 3


def _tree_arrays(packed: PackedForest) -> dict[str, np.ndarray]:
    inner = packed.feature >= 0
    thr = np.zeros(packed.n_nodes, dtype=np.float32)
    thr[inner] = packed.thresholds()
    tree_of = np.repeat(np.arange(packed.n_trees), np.diff(packed.offsets.astype(np.int64)))
    first = packed.offsets[tree_of].astype(np.int64)
    local = np.arange(packed.n_nodes) - first
    right_local = np.where(inner, packed.global_right() - first, 0)
    return {"inner": inner, "thr": thr, "tree_of": tree_of, "local": local, "right": right_local}


def _finish(nodes: list, packed: PackedForest, k: int, initializer: list, name: str) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, packed.n_features])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, k])],
        initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def _boosted_to_onnx(packed: PackedForest) -> bytes:
    from onnx import TensorProto, helper

    assert packed.init is not None
    a = _tree_arrays(packed)
    n_out = len(packed.init)
    leaves = np.flatnonzero(~a["inner"])
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["sums"], domain="ai.onnx.ml",
        n_targets=n_out, aggregate_function="SUM", post_transform="NONE",
        nodes_treeids=a["tree_of"].tolist(), nodes_nodeids=a["local"].tolist(),
        nodes_featureids=np.maximum(packed.feature, 0).astype(int).tolist(),
        nodes_values=a["thr"].tolist(),
        nodes_modes=["BRANCH_LEQ" if i else "LEAF" for i in a["inner"]],
        nodes_truenodeids=np.where(a["inner"], a["local"] + 1, 0).tolist(),
        nodes_falsenodeids=a["right"].tolist(),
        target_treeids=a["tree_of"][leaves].tolist(), target_nodeids=a["local"][leaves].tolist(),
        target_ids=(a["tree_of"][leaves] % n_out).tolist(),
        target_weights=packed.leaf_weights()[:, 0].astype(np.float32).tolist())
    init = [helper.make_tensor("offset", TensorProto.FLOAT, [n_out], packed.boost_offset().tolist())]
    nodes = [node]
    total = "sums"
    if packed.leaf_bits != 32:
        init.append(helper.make_tensor("step", TensorProto.FLOAT, [], [packed.leaf_step]))
        nodes.append(helper.make_node("Mul", ["sums", "step"], ["scaled"]))
        total = "scaled"
    nodes.append(helper.make_node("Add", [total, "offset"], ["raw"]))
    if packed.n_classes == 0:  # regression: the value
        init.append(helper.make_tensor("flat", TensorProto.INT64, [1], [-1]))
        nodes.append(helper.make_node("Reshape", ["raw", "flat"], ["prediction"]))
        graph = helper.make_graph(
            nodes, "autocompress_tree_regressor",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, packed.n_features])],
            [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [None])],
            initializer=init)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                       helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
        model.ir_version = 8
        return model.SerializeToString()
    if n_out == 1:
        init += [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                 helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
                 helper.make_tensor("flat", TensorProto.INT64, [1], [-1])]
        nodes += [helper.make_node("Greater", ["raw", "zero"], ["positive"]),
                  helper.make_node("Cast", ["positive"], ["label2d"], to=TensorProto.INT64),
                  helper.make_node("Reshape", ["label2d", "flat"], ["label"]),
                  helper.make_node("Sigmoid", ["raw"], ["p1"]),
                  helper.make_node("Sub", ["one", "p1"], ["p0"]),
                  helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
    else:
        nodes += [helper.make_node("ArgMax", ["raw"], ["label"], axis=1, keepdims=0),
                  helper.make_node("Softmax", ["raw"], ["probabilities"], axis=1)]
    return _finish(nodes, packed, packed.n_classes, init, "autocompress_boosted_trees")


def forest_to_onnx(packed: PackedForest) -> bytes:
    """Serialized ONNX model computing ``packed``'s predictions."""
    from onnx import TensorProto, helper

    if packed.boosted:
        return _boosted_to_onnx(packed)

    inner = packed.feature >= 0
    thr = np.zeros(packed.n_nodes, dtype=np.float32)
    thr[inner] = packed.thresholds()
    right = packed.global_right()
    tree_of = np.repeat(np.arange(packed.n_trees), np.diff(packed.offsets.astype(np.int64)))
    local = np.arange(packed.n_nodes) - packed.offsets[tree_of].astype(np.int64)
    right_local = np.where(inner, right - packed.offsets[tree_of].astype(np.int64), 0)
    weights = packed.leaf_weights()
    k = packed.n_classes
    leaves = np.flatnonzero(~inner)
    node = helper.make_node(
        "TreeEnsembleClassifier", ["X"], ["ensemble_label", "scores"], domain="ai.onnx.ml",
        nodes_treeids=tree_of.tolist(), nodes_nodeids=local.tolist(),
        nodes_featureids=np.maximum(packed.feature, 0).astype(int).tolist(),
        nodes_values=thr.tolist(),
        nodes_modes=["BRANCH_LEQ" if i else "LEAF" for i in inner],
        nodes_truenodeids=np.where(inner, local + 1, 0).tolist(),
        nodes_falsenodeids=right_local.tolist(),
        class_treeids=np.repeat(tree_of[leaves], k).tolist(),
        class_nodeids=np.repeat(local[leaves], k).tolist(),
        class_ids=np.tile(np.arange(k), len(leaves)).tolist(),
        class_weights=weights.astype(np.float32).ravel().tolist(),
        classlabels_int64s=list(range(k)), post_transform="NONE",
    )
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0 / packed.leaf_scale()])
    div = helper.make_node("Mul", ["scores", "scale"], ["probabilities"])
    # NOTE: the label is the argmax of the scores (ties: the lowest class, as in the artefact);
    # the ensemble's own label output decides two-class inputs by the sign of one score instead.
    argmax = helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)
    graph = helper.make_graph(
        [node, div, argmax], "autocompress_forest",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, packed.n_features])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, k])],
        initializer=[scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def onnx_predict(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Labels (regression: values) the ONNX model predicts with ONNX Runtime (one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    first = sess.get_outputs()[0].name
    return np.asarray(sess.run([first], {"X": np.asarray(x, dtype=np.float32)})[0])


@dataclass
class ClassicExport:
    """What ``export`` wrote and checked."""

    point: int
    path: Path
    onnx_bytes: int
    artefact_bytes: int
    n_test: int
    mismatches: int
    test_acc: float
    graph: str = "ai.onnx.ml TreeEnsembleClassifier"
    regression: bool = False

    def lines(self) -> list[str]:
        """Summary for the command line."""
        return [f"point {self.point} -> {self.path} (onnx, {self.graph})",
                f"size     {self.onnx_bytes} B ONNX; packed artefact {self.artefact_bytes} B",
                (f"test     R² {self.test_acc:.4f}; ONNX Runtime predictions equal the artefact's "
                 f"(within 1e-5 relative) on {self.n_test - self.mismatches}/{self.n_test} test samples"
                 if self.regression else
                 f"test     accuracy {100 * self.test_acc:.2f}%; ONNX Runtime labels equal the "
                 f"artefact's on {self.n_test - self.mismatches}/{self.n_test} test samples")]


def export_classic_point(run_dir: str | Path, point: str, out: str | None = None, *,
                         fmt: str = "onnx", force: bool = False) -> ClassicExport:
    """Write a front point of a classic run as ONNX, after checking ONNX Runtime's labels equal
    the packed artefact's on the test split (``CheckFailedError`` otherwise, nothing written)."""
    if fmt != "onnx":
        raise UserInputError(f"--format {fmt!r} for a classic model; allowed: onnx")
    found = read_classic_run(run_dir)
    if found is None:
        raise UserInputError(f"{str(run_dir)!r} is not a classic search run")
    spec, pareto = found
    p = resolve_classic_point(pareto, point)
    run = Path(run_dir)
    dest = Path(out) if out else run / "export" / f"point-{p['id']}.onnx"
    if dest.exists() and not force:
        raise UserInputError(f"--out {str(dest)!r} exists; pass --force to overwrite it")
    blob = (run / p["artefact"]).read_bytes()
    from autocompress.classic.dense import PackedDense, dense_to_onnx, load_artefact

    packed = load_artefact(blob)
    # the test split is rebuilt from the recorded data and seed; the model is not needed
    from autocompress.classic.data import load_tabular

    splits = load_tabular(spec["data"], target=spec.get("target"), seed=int(spec["seed"]))
    model_bytes = dense_to_onnx(packed) if isinstance(packed, PackedDense) else forest_to_onnx(packed)
    got = onnx_predict(model_bytes, splits.x_test)
    want = packed.predict(splits.x_test)
    if splits.regression:
        mismatches = int((~np.isclose(got, want, rtol=1e-5, atol=1e-6)).sum())
    else:
        mismatches = int((got != want).sum())
    if mismatches:
        raise CheckFailedError(f"ONNX predictions differ from the artefact's on {mismatches} of "
                               f"{len(want)} test samples; not written")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(model_bytes)
    graph = ("ai.onnx.ml TreeEnsembleRegressor" if packed.boosted else "ai.onnx.ml TreeEnsembleClassifier"
             if isinstance(packed, PackedForest) else f"{packed.kind}: standard ONNX operators")
    return ClassicExport(int(p["id"]), dest, len(model_bytes), len(blob), len(want), mismatches,
                         splits.score(want, splits.y_test), graph, splits.regression)
