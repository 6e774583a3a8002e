"""Export a trained checkpoint to ONNX with its ModelSpec in the metadata.

The exported graph returns temperature-scaled logits (temperature fitted on validation), so
``softmax(output)`` is the calibrated probability; argmax is unchanged by the scaling.
Export fails when ONNX Runtime and torch disagree by more than ``PARITY_TOL`` on real inputs.
"""
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from xray_infer.spec import ModelSpec

from .dataset import CLASS_NAMES
from .metrics import softmax, summarize
from .model import build

OPSET = 17
PARITY_TOL = 1e-4
TRAINING_DATA = ("Kermany et al. 2018 pediatric chest X-rays (Guangzhou Women and Children's "
                 "Medical Center, ages 1-5, AP view), CC BY 4.0, doi:10.17632/rscbjbr9sj.2; "
                 "published patient-wise split; validation carved from train by patient")


class _Scaled(nn.Module):
    def __init__(self, model, temperature):
        super().__init__()
        self.model = model
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature))

    def forward(self, x):
        return self.model(x) * self.inv_t


def fit_temperature(logits, labels):
    """Temperature minimising validation NLL (grid search in log space)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 400))
    nll = [-np.log(softmax(logits / t)[np.arange(len(labels)), labels] + 1e-12).mean()
           for t in grid]
    return float(grid[int(np.argmin(nll))])


def ort_logits(path, x, batch_size=256):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: np.ascontiguousarray(x[i:i + batch_size])})[0]
                           for i in range(0, len(x), batch_size)])


def export(run_cfg, state_dict, out_path, data, *, model_version, provenance):
    """Write ``out_path`` (+ ``.sha256``); returns the ModelSpec written.

    ``data`` maps ``val``/``test`` to ``(x, labels)`` preprocessed at the model's input size.
    """
    out_path = Path(out_path)
    model = build(run_cfg.net, len(CLASS_NAMES))
    model.load_state_dict(state_dict)
    model.eval()
    xval, yval = data["val"]
    with torch.no_grad():
        val_logits = model(torch.as_tensor(np.asarray(xval))).numpy()
    temperature = fit_temperature(val_logits, yval)
    wrapped = _Scaled(model, temperature).eval()
    size = run_cfg.net.input_size
    spec = ModelSpec(class_names=CLASS_NAMES, input_size=size, mean=run_cfg.mean, std=run_cfg.std,
                     model_version=model_version, training_data=TRAINING_DATA)
    tmp = out_path.with_suffix(".tmp.onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(wrapped, (torch.zeros(1, 1, size, size),), str(tmp), dynamo=False,
                      input_names=[spec.input_name], output_names=[spec.output_name],
                      dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
                      opset_version=OPSET)
    # Parity on a fixed batch of real validation images.
    check = np.ascontiguousarray(np.asarray(xval[:32]))
    with torch.no_grad():
        ref = wrapped(torch.as_tensor(check)).numpy()
    diff = float(np.abs(ort_logits(tmp, check) - ref).max())
    if diff > PARITY_TOL:
        tmp.unlink()
        raise RuntimeError(f"ONNX Runtime and torch disagree: max abs logit diff {diff:.2e} "
                           f"> {PARITY_TOL:.0e}")
    metrics = {"temperature": temperature, "export_parity_max_abs_diff": diff}
    for split in ("val", "test"):
        x, y = data[split]
        m = summarize(y, softmax(ort_logits(tmp, x)))
        metrics[split] = m
    spec = ModelSpec(**{**spec.__dict__, "metrics": metrics,
                        "provenance": dict(provenance, run_config=run_cfg.to_dict())})
    proto = onnx.load(str(tmp))
    tmp.unlink()
    del proto.metadata_props[:]
    for k, v in spec.to_metadata().items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "xray_infer.trainer"
    proto.doc_string = "Pediatric chest X-ray classifier (normal/bacterial/viral). Not a diagnostic device."
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, out_path)
    digest = hashlib.sha256(out_path.read_bytes()).hexdigest()
    out_path.with_name(out_path.name + ".sha256").write_text(f"{digest}  {out_path.name}\n")
    return spec


def load_checkpoint(path):
    """The eval-mode torch module saved by ``export --save-checkpoint``, temperature included,
    so that it computes the same logits as the exported ONNX graph."""
    from .train import RunConfig
    ckpt = torch.load(path, map_location="cpu")
    cfg = RunConfig.from_dict(ckpt["config"])
    model = build(cfg.net, len(CLASS_NAMES))
    model.load_state_dict(ckpt["state_dict"])
    return _Scaled(model, ckpt["temperature"]).eval(), cfg
