"""The model's data contract, stored as JSON in the ONNX metadata under one key.

The exporter writes a ``ModelSpec``; ``ModelSpec.from_metadata`` is the one function that reads
it. Nothing about classes or preprocessing is known to the library from anywhere else.
"""
import json
from dataclasses import asdict, dataclass, field, fields

from .errors import ModelError
from .preprocess import RESIZE_RULE

METADATA_KEY = "xray_infer.spec"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything inference needs to feed the model and read its output.

    The model takes float32 ``(N, 1, input_size, input_size)`` and returns ``(N, len(class_names))``
    logits; ``softmax(logits)`` gives the class probabilities.
    """
    class_names: tuple
    input_size: int
    mean: float
    std: float
    resize: str = RESIZE_RULE
    color: str = "luminance"
    input_name: str = "image"
    output_name: str = "logits"
    model_version: str = "unversioned"
    training_data: str = ""
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    _REQUIRED = ("class_names", "input_size", "mean", "std", "resize", "schema_version")

    def to_metadata(self):
        """{key: value} pairs for ``onnx.ModelProto.metadata_props``."""
        return {METADATA_KEY: json.dumps(asdict(self), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata, source="<model>"):
        """Parse and validate the spec from an ONNX metadata mapping; ModelError when invalid."""
        if METADATA_KEY not in metadata:
            raise ModelError(f"{source}: no '{METADATA_KEY}' metadata; not an xray_infer model "
                             f"(export it with `python -m trainer export`)")
        try:
            raw = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise ModelError(f"{source}: '{METADATA_KEY}' metadata is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ModelError(f"{source}: '{METADATA_KEY}' metadata is not a JSON object")
        missing = [k for k in cls._REQUIRED if k not in raw]
        if missing:
            raise ModelError(f"{source}: model metadata lacks {', '.join(missing)}")
        if raw["schema_version"] != SCHEMA_VERSION:
            raise ModelError(f"{source}: metadata schema {raw['schema_version']} is not "
                             f"supported (this xray_infer reads {SCHEMA_VERSION})")
        if raw["resize"] != RESIZE_RULE:
            raise ModelError(f"{source}: resize rule {raw['resize']!r} is not implemented "
                             f"(only {RESIZE_RULE!r})")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known}
        kwargs["class_names"] = tuple(kwargs["class_names"])
        spec = cls(**kwargs)
        names = spec.class_names
        if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str)
                                                                       for n in names):
            raise ModelError(f"{source}: class_names must be 2 or more distinct strings, "
                             f"got {list(names)}")
        if not (isinstance(spec.input_size, int) and spec.input_size > 0):
            raise ModelError(f"{source}: input_size must be a positive integer")
        if not spec.std > 0:
            raise ModelError(f"{source}: std must be positive")
        return spec
