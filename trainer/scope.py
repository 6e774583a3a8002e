"""The image scope gate: how far an image's features lie from those of the training radiographs,
computed inside the exported graph as a second-to-last output.

Method (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples
and adversarial attacks"): the input of the classifier layer (the pooled last feature map) is
modelled as class-conditional Gaussians with one shared covariance, fitted on the training
split (Ledoit-Wolf shrinkage: 1,280 dimensions from a few thousand images). The score is the
squared Mahalanobis distance to the nearest class mean. The threshold is the distance that a
set share of the validation split stays under; no out-of-scope image and no test image is seen.
"""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

#: The output the gate adds to the graph: (N,) squared Mahalanobis distances.
SCOPE_OUTPUT = "scope_distance"
#: Share of the validation split that must pass the threshold.
VALIDATION_PASS = 0.995
#: The population this project's models are trained on; ``accepted_ages`` is what the metadata
#: gate admits by default (the training range: nothing supports the model outside it).
POPULATION = {"modalities": ["CR", "DX"], "image_modalities": ["OT", "SC"],
              "views": ["AP", "PA"], "body_parts": ["CHEST", "THORAX", "LUNG"],
              "training_ages": [1, 5], "accepted_ages": [1, 5]}
#: Agreement between the graph's distance and the same formula in float64 on its features.
PARITY_RTOL = 1e-3
_PREFIX = "scope/"


def feature_tensor(proto):
    """The name of the classifier layer's input (the pooled features): the first input of the
    first Gemm found walking back from the logits output."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    stack, seen = [producer[proto.graph.output[0].name]], set()
    while stack:
        node = stack.pop()
        if node.op_type == "Gemm":
            return node.input[0]
        seen.add(id(node))
        stack += [producer[i] for i in node.input if i in producer and id(producer[i]) not in seen]
    raise ValueError("no classifier layer (Gemm) behind the logits output")


def with_features(proto):
    """A copy of ``proto`` that also outputs the pooled features (for fitting)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.output.append(helper.make_tensor_value_info(feature_tensor(proto),
                                                          TensorProto.FLOAT, None))
    return out


def features(proto, *arrays, batch_size=256):
    """Pooled features, float64 (N, D), of each preprocessed float32 batch in ``arrays`` (a
    list, one per array; one session for all)."""
    probe = with_features(proto)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    name, feat = sess.get_inputs()[0].name, probe.graph.output[-1].name
    return [np.concatenate([sess.run([feat], {name: np.ascontiguousarray(x[i:i + batch_size])})[0]
                            for i in range(0, len(x), batch_size)]).astype(np.float64)
            for x in arrays]


class Gaussians:
    """Class means and a shared precision; ``distance`` is the squared Mahalanobis distance to
    the nearest mean."""

    def __init__(self, f, labels):
        from sklearn.covariance import LedoitWolf
        classes = np.unique(labels)
        self.means = np.stack([f[labels == k].mean(0) for k in classes])
        centred = np.concatenate([f[labels == k] - self.means[i] for i, k in enumerate(classes)])
        lw = LedoitWolf().fit(centred)
        self.precision, self.shrinkage, self.n = lw.precision_, float(lw.shrinkage_), len(f)
        # P = L L^T, so (f - m) P (f - m)^T = |(f - m) L|^2: the graph needs one product.
        self.cholesky = np.linalg.cholesky(self.precision)

    def distance(self, f):
        z, m = f @ self.cholesky, self.means @ self.cholesky
        return ((z[:, None, :] - m[None]) ** 2).sum(-1).min(1)


def add_scope_output(proto, gaussians):
    """``proto`` with the ``scope_distance`` output: min_k |f L - m_k L|^2 of the features."""
    g = proto.graph
    feat = feature_tensor(proto)
    p = _PREFIX
    g.initializer.extend([
        numpy_helper.from_array(gaussians.cholesky.astype(np.float32), p + "cholesky"),
        numpy_helper.from_array((gaussians.means @ gaussians.cholesky).astype(np.float32),
                                p + "means"),
        numpy_helper.from_array(np.array([1], np.int64), p + "axis1")])
    g.node.extend([
        helper.make_node("MatMul", [feat, p + "cholesky"], [p + "z"], name=p + "project"),
        helper.make_node("Unsqueeze", [p + "z", p + "axis1"], [p + "z3"], name=p + "unsqueeze"),
        helper.make_node("Sub", [p + "z3", p + "means"], [p + "diff"], name=p + "diff"),
        helper.make_node("ReduceSumSquare", [p + "diff"], [p + "sq"], axes=[2], keepdims=0,
                         name=p + "distances"),
        helper.make_node("ReduceMin", [p + "sq"], [SCOPE_OUTPUT], axes=[1], keepdims=0,
                         name=p + "nearest")])
    g.output.append(helper.make_tensor_value_info(SCOPE_OUTPUT, TensorProto.FLOAT, ["batch"]))
    return proto


def scope_nodes(proto):
    """Names of the gate's nodes (kept in float32 in the float16 variant: distances of some
    thousands squared overflow float16)."""
    return [n.name for n in proto.graph.node if n.name.startswith(_PREFIX)]


def fit(proto, train, val):
    """Fit the gate on ``train`` = (x, labels) and set its threshold on ``val`` = (x, labels).

    Returns (the augmented proto, the spec's ``scope`` record, parity of the graph's distance
    against float64 on the validation features).
    """
    f_train, f_val = features(proto, train[0], val[0])
    gaussians = Gaussians(f_train, np.asarray(train[1]))
    d_val = gaussians.distance(f_val)
    threshold = float(np.quantile(d_val, VALIDATION_PASS))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    add_scope_output(out, gaussians)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    check = np.ascontiguousarray(val[0][:64])
    got = sess.run([SCOPE_OUTPUT], {name: check})[0].astype(np.float64)
    parity = float(np.max(np.abs(got - d_val[:64]) / np.maximum(d_val[:64], 1.0)))
    if parity > PARITY_RTOL:
        raise RuntimeError(f"the scope output disagrees with its float64 formula: relative "
                           f"difference {parity:.1e} > {PARITY_RTOL:.0e}")
    record = {
        "method": "squared Mahalanobis distance of the classifier's input features to the "
                  "nearest class mean, shared Ledoit-Wolf covariance (Lee et al. 2018)",
        "threshold": threshold,
        "threshold_rule": f"{VALIDATION_PASS:.1%} of the validation split passes",
        "fitted_on": f"{gaussians.n} training-split images (validation patients held out)",
        "threshold_set_on": f"{len(d_val)} validation-split images",
        "validation_passed": float((d_val <= threshold).mean()),
        "shrinkage": gaussians.shrinkage,
        "parity_max_rel_diff": parity,
    }
    return out, record
