"""xray_infer: pediatric chest X-ray classification (normal / bacterial / viral pneumonia).

Research software, not a diagnostic device: see docs/model.md for what the model can and cannot do.

    >>> from xray_infer import classify
    >>> for r in classify(["scan1.jpeg", "scan2.png"]):
    ...     print(r.source, r.label, r.probabilities, r.error)
"""
import importlib

from .errors import (DecodeError, ImageError, InputError, ModelError, ProviderError,
                     ProviderWarning, UsageError, XrayInferError, XrayInferWarning)
from .spec import ModelSpec

def _version():
    """The installed distribution's version: ``pyproject.toml`` is its one source."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("xray-infer")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"


__version__ = _version()

# The public names that need ONNX Runtime or OpenCV load on first use, so that the command
# line can check its arguments before paying for those imports.
_LAZY = {"classify": "classifier", "Classifier": "classifier", "Result": "result",
         "DEFAULT_MODEL": "model", "load_model": "model", "Decoded": "decode",
         "read_image": "decode", "Encoded": "batch", "ScoringOptions": "options"}

__all__ = ["classify", "Classifier", "Result", "ScoringOptions", "ModelSpec", "Decoded",
           "Encoded", "read_image", "load_model", "DEFAULT_MODEL", "XrayInferError", "InputError",
           "DecodeError", "ImageError", "ModelError", "ProviderError", "UsageError",
           "XrayInferWarning", "ProviderWarning"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
