"""The model contract: what a model takes, what it returns and how to read it.

This module is a leaf (it imports nothing of the package and nothing heavy): the trainer writes
a ``ModelSpec`` as JSON into the ONNX metadata under one key, and ``ModelSpec.from_metadata`` is
the one function that reads it. Nothing about classes, input or preprocessing is known to the
library from anywhere else.
"""
import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .errors import ModelError

METADATA_KEY = "xray_infer.spec"
SCHEMA_VERSION = 1

#: The resize rule of ``xray_infer.preprocess``: area resampling to a square, aspect ratio not
#: kept (the training images are whole radiographs squashed to a square).
RESIZE_RULE = "area-stretch"
#: How colour inputs become the one grey channel: ITU-R BT.601 luminance.
COLOR_RULE = "luminance"
#: How probabilities become a label: the most probable class.
DECISION_RULE = "argmax"

#: Arithmetic precisions a model may be exported in (the first is the default).
PRECISIONS = ("float32", "float16", "int8")

#: How the library may decode images: ``"reduced"`` lets a JPEG much larger than the model's
#: input decode at a reduced size (``preprocess.jpeg_scale``), ``"full"`` never does.
DECODE_MODES = ("reduced", "full")

#: Images per inference call unless the caller says otherwise: on a GPU, enough to keep it
#: busy; on the CPU, where each worker thread scores batches of its own, few enough that a
#: batch's activations stay in the core's cache (docs/benchmarks.md, inference).
DEFAULT_BATCH_SIZE = 32
CPU_BATCH_SIZE = 8


def batch_size_for(on_cpu, asked=None):
    """The one batch-size rule: what was asked for, else ``CPU_BATCH_SIZE`` on the CPU and
    ``DEFAULT_BATCH_SIZE`` on another provider."""
    return asked or (CPU_BATCH_SIZE if on_cpu else DEFAULT_BATCH_SIZE)


def softmax(logits):
    """Row-wise softmax of ``(N, C)`` logits in float64 (stable for any finite input)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ModelSpec:
    """Everything inference needs to feed the model and read its output.

    The model takes float32 ``(N, 1, input_size, input_size)``: the scan resized by
    ``resize`` and normalised as ``(x / maxval - mean) / std``. It returns ``(N,
    len(class_names))`` logits; ``softmax(logits)`` gives the class probabilities and
    ``decision`` the label. ``validation_split`` says which training patients selected it.
    Where ``heatmap_output`` is set, that output holds class activation maps ``(N, C, h, w)``
    whose spatial mean, for a single model, is the class's calibrated logit.

    Scope: where ``scope_output`` is set, that output holds ``(N,)`` distances of each image's
    features from the training radiographs'; an image whose distance exceeds
    ``scope["threshold"]`` is out of scope (no label). ``scope`` records the method, the
    threshold and the data each was fitted on. ``population`` declares who the model is for,
    read by the DICOM metadata gate: ``modalities`` (gated on metadata), ``image_modalities``
    (no modality claim: left to the image gate), ``views``, ``body_parts``, ``training_ages``
    and ``accepted_ages`` (``[low, high]`` in whole years, inclusive: the default range).

    Adult head: where ``adult_output`` is set, that output holds ``(N,)`` scores of how much each
    image looks like an adult's film; one over ``adult_head["threshold"]`` is out of scope,
    unless the DICOM header gives the patient's age (the metadata gate decides then).
    ``adult_head`` records the method, the threshold and the data it was fitted on.
    """
    class_names: tuple
    input_size: int
    mean: float
    std: float
    resize: str = RESIZE_RULE
    color: str = COLOR_RULE
    decision: str = DECISION_RULE
    input_name: str = "image"
    output_name: str = "logits"
    # Optional second output: class activation maps (N, classes, h, w); "" when absent.
    heatmap_output: str = ""
    # Arithmetic inside the graph; inputs and outputs are float32 either way.
    precision: str = "float32"
    model_version: str = "unversioned"
    training_data: str = ""
    validation_split: str = ""
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    scope_output: str = ""
    scope: dict = field(default_factory=dict)
    population: dict = field(default_factory=dict)
    adult_output: str = ""
    adult_head: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    _REQUIRED = ("class_names", "input_size", "mean", "std", "resize", "schema_version")
    #: Rules this library implements; a model asking for another one is refused.
    _RULES = {"resize": (RESIZE_RULE,), "color": (COLOR_RULE,), "decision": (DECISION_RULE,),
              "precision": PRECISIONS}

    def to_metadata(self):
        """{key: value} pairs for ``onnx.ModelProto.metadata_props``."""
        return {METADATA_KEY: json.dumps(asdict(self), sort_keys=True)}

    def to_dict(self):
        return asdict(self)

    def decide(self, probabilities):
        """Index of the class the decision rule picks for one row of probabilities."""
        return int(np.argmax(probabilities))

    @classmethod
    def from_metadata(cls, metadata, source="<model>"):
        """Parse and validate the spec from an ONNX metadata mapping; ModelError when invalid."""
        if METADATA_KEY not in metadata:
            raise ModelError(f"{source}: no '{METADATA_KEY}' metadata; not an xray_infer model "
                             f"(export it with `python -m trainer export`)")
        try:
            raw = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise ModelError(f"{source}: '{METADATA_KEY}' metadata is not valid JSON: "
                             f"{e}") from None
        if not isinstance(raw, dict):
            raise ModelError(f"{source}: '{METADATA_KEY}' metadata is not a JSON object")
        missing = [k for k in cls._REQUIRED if k not in raw]
        if missing:
            raise ModelError(f"{source}: model metadata lacks {', '.join(missing)}")
        if raw["schema_version"] != SCHEMA_VERSION:
            raise ModelError(f"{source}: metadata schema {raw['schema_version']} is not "
                             f"supported (this xray_infer reads {SCHEMA_VERSION})")
        for key, known in cls._RULES.items():
            if raw.get(key, known[0]) not in known:
                raise ModelError(f"{source}: {key} rule {raw[key]!r} is not implemented "
                                 f"(only {', '.join(map(repr, known))})")
        names = raw["class_names"]
        if (not isinstance(names, list) or len(names) < 2 or len(set(map(str, names))) != len(names)
                or not all(isinstance(n, str) and n for n in names)):
            raise ModelError(f"{source}: class_names must be 2 or more distinct strings, "
                             f"got {names!r}")
        size = raw["input_size"]
        if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
            raise ModelError(f"{source}: input_size must be a positive integer, got {size!r}")
        for key in ("mean", "std"):
            v = raw[key]
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)):
                raise ModelError(f"{source}: {key} must be a finite number, got {v!r}")
        if not raw["std"] > 0:
            raise ModelError(f"{source}: std must be positive, got {raw['std']!r}")
        for output, record, what in (("scope_output", "scope", "scope"),
                                     ("adult_output", "adult_head", "adult head")):
            if raw.get(output):
                t = (raw.get(record) or {}).get("threshold")
                if not (isinstance(t, (int, float)) and not isinstance(t, bool)
                        and np.isfinite(t)):
                    raise ModelError(f"{source}: {output} needs a finite {what} threshold, "
                                     f"got {t!r}")
        ages = (raw.get("population") or {}).get("accepted_ages")
        if ages is not None and not (isinstance(ages, list) and len(ages) == 2
                                     and all(isinstance(a, (int, float)) for a in ages)
                                     and 0 <= ages[0] <= ages[1]):
            raise ModelError(f"{source}: population accepted_ages must be [low, high] years, "
                             f"got {ages!r}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known}
        kwargs["class_names"] = tuple(names)
        return cls(**kwargs)
