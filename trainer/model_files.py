"""Writing a model file: the ONNX graph with the library's contract as its metadata, saved
atomically beside the ``.sha256`` sidecar the library checks. A leaf: export, quantize and
decoding all write through it."""
import os
from pathlib import Path

import onnx

from xray_infer.model import write_sidecar


def write_model(proto, spec, out_path):
    """Save ``proto`` with ``spec`` as its metadata to ``out_path`` atomically, with the
    ``.sha256`` sidecar the library checks."""
    out_path = Path(out_path)
    del proto.metadata_props[:]
    for k, v in spec.to_metadata().items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "xray_infer.trainer"
    proto.doc_string = ("Pediatric chest X-ray classifier (normal/bacterial/viral). "
                        "Not a diagnostic device.")
    onnx.checker.check_model(proto)
    tmp = out_path.with_suffix(".tmp.onnx")
    onnx.save(proto, str(tmp))
    os.replace(tmp, out_path)
    write_sidecar(out_path)
