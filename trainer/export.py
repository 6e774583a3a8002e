"""Export one trained model, or an ensemble of several, to ONNX with its ModelSpec in the metadata.

Each member's logits are divided by a temperature fitted on validation; the graph returns
``log(mean_i softmax(logits_i / T_i))``, so ``softmax(output)`` is the calibrated (ensemble)
probability. For a single member the argmax is that of its raw logits.
Export fails when ONNX Runtime and torch disagree by more than ``PARITY_TOL`` on real inputs.
"""
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from xray_infer.model import load_model, sidecar_path, variant_path
from xray_infer.spec import PRECISIONS, ModelSpec

from .classes import CLASS_NAMES

from . import adult_head, scope
from .dataset import VAL_SPLITS, fullres_scans
from .metrics import softmax, summarize
from .model import build
from .model_files import write_model

OPSET = 17
#: Name of the class activation map output, (N, classes, h, w).
HEATMAP_OUTPUT = "class_maps"
PARITY_TOL = 1e-4
TRAINING_DATA = ("Kermany et al. 2018 pediatric chest X-rays (Guangzhou Women and Children's "
                 "Medical Center, ages 1-5, AP view), CC BY 4.0, doi:10.17632/rscbjbr9sj.2; "
                 "published patient-wise split; validation carved from train by patient")


def member_outputs(model, x):
    """A member's logits and class activation maps (CAM), from one pass through its features.

    Every family ends in global average pooling and a linear layer, which commute: the map of
    class k is the classifier applied at every position of the last feature map (a 1x1
    convolution, ``W_k . f(i, j) + b_k``), and its spatial mean is the logit. For such a head
    CAM equals Grad-CAM, so no gradients are needed.
    """
    f = model.features(x)
    logits = model.head(model.pool(f).flatten(1))
    maps = F.conv2d(f, model.head.weight[:, :, None, None], model.head.bias)
    return logits, maps


class Calibrated(nn.Module):
    """Members with temperatures -> log of the mean calibrated probability, and with
    ``class_maps`` also the mean of the members' temperature-scaled class maps (for one member
    their spatial means are the calibrated logits: softmax of them is the output probability)."""

    def __init__(self, models, temperatures, class_maps=False):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.class_maps = class_maps
        self.register_buffer("inv_t", torch.tensor([1.0 / t for t in temperatures]))

    def forward(self, x):
        outs = [member_outputs(m, x) for m in self.members]
        p = torch.stack([torch.softmax(logits * self.inv_t[i], dim=1)
                         for i, (logits, _) in enumerate(outs)]).mean(0)
        log_p = torch.log(p.clamp_min(1e-12))
        if not self.class_maps:
            return log_p
        maps = torch.stack([m * self.inv_t[i] for i, (_, m) in enumerate(outs)]).mean(0)
        return log_p, maps


def fit_temperature(logits, labels):
    """Temperature minimising validation NLL (grid search in log space)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 400))
    nll = [-np.log(softmax(logits / t)[np.arange(len(labels)), labels] + 1e-12).mean()
           for t in grid]
    return float(grid[int(np.argmin(nll))])


def add_scope_gate(model_path, data):
    """Fit the scope gate of an exported model that has none and rewrite it in place (and its
    float16 variant, when there is one). ``data``: {train, val, test} arrays at its input size.
    Returns the new spec."""
    sess, spec = load_model(model_path, providers=["CPUExecutionProvider"], precision="float32")
    if spec.scope_output:
        from .selection import RequestError
        raise RequestError(f"{model_path} already has a scope gate")
    proto, record = scope.fit(onnx.load(str(model_path)), data["train"], data["val"])
    spec = replace(spec, scope_output=scope.SCOPE_OUTPUT, scope=record,
                   population=scope.POPULATION)
    write_model(proto, spec, model_path)
    if variant_path(model_path, "float16").exists():
        export_fp16(model_path, data)
    return spec


def fit_adult_head(proto, spec, data, train_patients, data_root):
    """``proto`` (a model with ``spec``'s input) with the adult head fitted (``adult_head.fit``),
    and the spec fields it sets; ``data``: {train, val, test} arrays at its input size."""
    from .arrays import cached_arrays
    geometry = (spec.input_size, spec.mean, spec.std)
    scans = [adult_head.Film(p, -1, "", 0, "") for p in fullres_scans(Path(data_root) / "fullres")]
    fullres = cached_arrays(scans, *geometry)[0] if scans else None
    proto, record = adult_head.fit(proto, data["train"], train_patients, data["val"], data_root,
                                   *geometry, test=data["test"][0], fullres=fullres)
    return proto, {"adult_output": adult_head.ADULT_OUTPUT, "adult_head": record}


def add_adult_head(model_path, data, train_patients, data_root):
    """Fit the adult head of an exported model that has none and rewrite it in place, with its
    float16 and int8 variants where there are such. Returns the new spec."""
    spec = load_model(model_path, providers=["CPUExecutionProvider"], precision="float32")[1]
    if spec.adult_output:
        from .selection import RequestError
        raise RequestError(f"{model_path} already has an adult head")
    proto, fields = fit_adult_head(onnx.load(str(model_path)), spec, data, train_patients,
                                   data_root)
    spec = replace(spec, **fields)
    write_model(proto, spec, model_path)
    if variant_path(model_path, "float16").exists():
        export_fp16(model_path, data)
    if variant_path(model_path, "int8").exists():
        from .quantize import export_int8
        export_int8(model_path, data)
    return spec


def graph_session(path):
    """A CPU session on a bare exported graph (no metadata yet); finished models are opened
    with ``xray_infer.model.load_model``."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_logits(sess, x, batch_size=256):
    """The session's first output for a float32 NCHW array, run in batches."""
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: np.ascontiguousarray(x[i:i + batch_size])})[0]
                           for i in range(0, len(x), batch_size)])


def _member(cfg, state):
    model = build(cfg.net, pretrained_weights=False)
    model.load_state_dict(state)
    return model.eval()


def export(members, out_path, data, *, model_version, provenance, adult=None):
    """Write ``out_path`` (+ ``.sha256``); returns (ModelSpec, torch module).

    ``members`` is a list of ``(RunConfig, state_dict)`` sharing input size, normalisation and
    validation split (temperatures are fitted on it).
    ``data`` maps ``train``/``val``/``test`` to ``(x, labels)`` preprocessed at that input
    size. ``adult``: (training patients, data root) to fit the adult head with, or None.
    """
    out_path = Path(out_path)
    cfgs = [c for c, _ in members]
    if len({(c.net.input_size, c.mean, c.std, c.val_split) for c in cfgs}) != 1:
        raise ValueError("ensemble members must share input size, normalisation and validation "
                         "split")
    run_cfg = cfgs[0]
    models = [_member(c, s) for c, s in members]
    xval, yval = data["val"]
    temperatures = []
    with torch.no_grad():
        for m in models:
            temperatures.append(fit_temperature(m(torch.as_tensor(np.asarray(xval))).numpy(), yval))
    wrapped = Calibrated(models, temperatures, class_maps=True).eval()
    size = run_cfg.net.input_size
    spec = ModelSpec(class_names=CLASS_NAMES, input_size=size, mean=run_cfg.mean, std=run_cfg.std,
                     model_version=model_version, validation_split=run_cfg.val_split,
                     heatmap_output=HEATMAP_OUTPUT,
                     training_data=f"{TRAINING_DATA} ({VAL_SPLITS[run_cfg.val_split]})")
    tmp = out_path.with_suffix(".tmp.onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    outputs = [spec.output_name, spec.heatmap_output]
    torch.onnx.export(wrapped, (torch.zeros(1, 1, size, size),), str(tmp), dynamo=False,
                      input_names=[spec.input_name], output_names=outputs,
                      dynamic_axes={name: {0: "batch"} for name in [spec.input_name, *outputs]},
                      opset_version=OPSET)
    # Parity of both outputs on a fixed batch of real validation images.
    check = np.ascontiguousarray(np.asarray(xval[:32]))
    with torch.no_grad():
        ref, ref_maps = (t.numpy() for t in wrapped(torch.as_tensor(check)))
    sess = graph_session(tmp)
    got, got_maps = sess.run(outputs, {spec.input_name: check})
    diff = max(float(np.abs(got - ref).max()), float(np.abs(got_maps - ref_maps).max()))
    if diff > PARITY_TOL:
        tmp.unlink()
        raise RuntimeError(f"ONNX Runtime and torch disagree: max abs output diff {diff:.2e} "
                           f"> {PARITY_TOL:.0e}")
    proto = onnx.load(str(tmp))
    tmp.unlink()
    proto, scope_record = scope.fit(proto, data["train"], data["val"])
    spec = replace(spec, scope_output=scope.SCOPE_OUTPUT, scope=scope_record,
                   population=scope.POPULATION)
    if adult is not None:
        proto, fields = fit_adult_head(proto, spec, data, *adult)
        spec = replace(spec, **fields)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    metrics = {"temperatures": temperatures, "export_parity_max_abs_diff": diff}
    for split in ("val", "test"):
        x, y = data[split]
        metrics[split] = summarize(y, softmax(ort_logits(sess, x)))
    spec = replace(spec, metrics=metrics,
                   provenance=dict(provenance, run_configs=[c.to_dict() for c in cfgs]))
    write_model(proto, spec, out_path)
    # Re-open what was written the way the library will, and check it still computes the same.
    sess, written = load_model(out_path, providers=["CPUExecutionProvider"], precision="float32")
    diff = float(np.abs(ort_logits(sess, check) - ref).max())
    same = written.to_metadata() == spec.to_metadata()
    if not same or diff > PARITY_TOL:
        raise RuntimeError(f"{out_path}: the written model does not read back as exported "
                           f"(same metadata: {same}, logit diff {diff:.2e})")
    return spec, wrapped


#: The float16 variant must agree with the float32 model on this share of the test scans, and
#: lose at most this much accuracy, or it is not written.
FP16_MIN_AGREEMENT, FP16_MAX_ACCURACY_DROP = 0.995, 0.005


def export_fp16(fp32_path, data):
    """Write the float16 variant of an exported model beside it (``model.variant_path``): float16
    weights and activations, float32 inputs and outputs, so the library's contract is the same.

    Its metadata is the float32 model's with ``precision`` float16, its own validation and test
    metrics, and a parity record against the float32 model. Raises (and writes nothing) when
    test agreement is under ``FP16_MIN_AGREEMENT`` or accuracy drops by more than
    ``FP16_MAX_ACCURACY_DROP``. Returns the parity record.
    """
    import warnings

    from onnxconverter_common import float16

    fp32_path = Path(fp32_path)
    sess32, spec = load_model(fp32_path, providers=["CPUExecutionProvider"],
                              precision="float32")
    with warnings.catch_warnings():  # it reports every weight below float16's range
        warnings.simplefilter("ignore")
        source = onnx.load(str(fp32_path))
        proto = float16.convert_float_to_float16(source, keep_io_types=True,
                                                 node_block_list=scope.scope_nodes(source)
                                                 + adult_head.head_nodes(source))
    out = variant_path(fp32_path, "float16")
    sess16 = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    metrics, parity = dict(spec.metrics), {}
    for split in ("val", "test"):
        x, y = data[split]
        p32, p16 = softmax(ort_logits(sess32, x)), softmax(ort_logits(sess16, x))
        metrics[split] = summarize(y, p16)
        parity[split] = {"n": int(len(y)),
                         "agreement": float((p32.argmax(1) == p16.argmax(1)).mean()),
                         "accuracy_float32": spec.metrics[split]["accuracy"],
                         "accuracy_float16": metrics[split]["accuracy"],
                         "max_abs_probability_diff": float(np.abs(p32 - p16).max())}
    test = parity["test"]
    if (test["agreement"] < FP16_MIN_AGREEMENT
            or test["accuracy_float32"] - test["accuracy_float16"] > FP16_MAX_ACCURACY_DROP):
        raise RuntimeError(f"float16 variant not written: test agreement {test['agreement']:.4f} "
                           f"(needs {FP16_MIN_AGREEMENT}), accuracy {test['accuracy_float16']:.4f} "
                           f"against {test['accuracy_float32']:.4f}")
    metrics["fp16_parity"] = parity
    write_model(proto, replace(spec, precision="float16", metrics=metrics), out)
    load_model(fp32_path, providers=["CPUExecutionProvider"], precision="float16")  # reads back
    return parity


def export_runs(paths, out, data_root, *, version, limit=0, fp16=True, int8=True, checkpoint=None,
                selection="explicit", command=""):
    """Export the runs whose result files are ``paths`` (one: a single model; several: an
    ensemble) to ``out``, with their provenance; also the float16 and int8 variants (``fp16``,
    ``int8``) and the torch checkpoint (``checkpoint``, a path). Returns (spec, float16 test
    parity or None, int8 parity record or None)."""
    import subprocess

    from . import runs
    from .arrays import load_arrays
    from .dataset import load_splits
    from .train import RunConfig
    results = [runs.load(p) for p in paths]
    members = [(RunConfig.from_dict(r["config"]),
                torch.load(runs.weights_path(p), map_location="cpu"))
               for p, r in zip(paths, results)]
    cfg = members[0][0]
    splits = load_splits(data_root, scheme=cfg.val_split)
    data = load_arrays(splits, cfg.net.input_size, cfg.mean, cfg.std, limit)  # train: the gate
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    provenance = {"runs": [f"{Path(p).parent.parent.name}/{Path(p).stem}" for p in paths],
                  "selection": selection, "command": command,
                  "trained_on": sorted({r.get("device", "") for r in results}),
                  "best_epochs": [r["best_epoch"] for r in results], "code_commit": commit}
    provenance.update(protocol_record(paths, results))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Every variant is made, measured and completed in a staging folder beside ``out``; only a
    # complete set replaces what is there (each file renamed once into place), so a gate that
    # refuses a variant, or a crash, leaves the earlier model as it was.
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as stage:
        staged = Path(stage) / out.name
        adult = None if limit else ([r.patient for r in splits["train"]], data_root)
        spec, _ = export(members, staged, data, model_version=version, provenance=provenance,
                         adult=adult)
        parity = export_fp16(staged, data)["test"] if fp16 else None
        if int8:
            from .quantize import export_int8
            int8 = export_int8(staged, data)
        scans = fullres_scans(Path(data_root) / "fullres")
        if scans and not limit:
            from .decoding import record_parity
            record_parity(staged, scans)
        for precision in PRECISIONS:  # a variant not made this time is stale: removed
            made, target = variant_path(staged, precision), variant_path(out, precision)
            for src, dst in ((made, target), (sidecar_path(made), sidecar_path(target))):
                if src.exists():
                    os.replace(src, dst)
                else:
                    dst.unlink(missing_ok=True)
    if checkpoint:
        save_checkpoint(checkpoint, members, spec.metrics["temperatures"])
    return spec, parity, int8 or None


def protocol_record(paths, results):
    """How a soup or a student was made, for its metadata: {"soup" or "student": its members
    (or teachers), seeds, recipe and probe; "protocol": the cross-validation table (means and
    standard errors of every recipe, the rule's steps) and the holdout comparisons
    (``trainer.protocol.compare``'s records)}, read from the run's own files; {} for any other
    run."""
    kind = next((k for k in ("soup", "student") if any(k in r for r in results)), None)
    if kind is None:
        return {}
    made = [r[kind] for r in results if kind in r]
    from .protocol import CANDIDATES, cv_table, holdout_path
    out = Path(paths[0]).resolve().parent.parent.parent  # <out>/soup/runs/<run>.json
    table = cv_table(out)
    protocol = {"cv": {"folds": table["folds"], "choice": table["choice"],
                       "recipes": {n: {k: v for k, v in rec.items() if k != "folds"}
                                   for n, rec in table["recipes"].items()}},
                "holdout": {c: json.loads(holdout_path(out, c).read_text())
                            for c in CANDIDATES if holdout_path(out, c).exists()}}
    return {kind: made[0] if len(made) == 1 else made, "protocol": protocol}


def save_checkpoint(path, members, temperatures):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"members": [{"config": c.to_dict(), "state_dict": s} for c, s in members],
                "temperatures": temperatures}, path)


def load_checkpoint(path):
    """(torch module, first member's RunConfig) saved by ``export --save-checkpoint``; the module
    computes the same outputs as the exported ONNX graph."""
    from .train import RunConfig
    ckpt = torch.load(path, map_location="cpu")
    cfgs = [RunConfig.from_dict(m["config"]) for m in ckpt["members"]]
    models = [_member(c, m["state_dict"]) for c, m in zip(cfgs, ckpt["members"])]
    return Calibrated(models, ckpt["temperatures"]).eval(), cfgs[0]
