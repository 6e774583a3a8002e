"""xray_infer: pediatric chest X-ray classification (normal / bacterial / viral pneumonia).

Research software, not a diagnostic device: see README for what the model can and cannot do.

    >>> from xray_infer import classify
    >>> for r in classify(["scan1.jpeg", "scan2.png"]):
    ...     print(r.source, r.label, r.probabilities, r.error)
"""
from .classifier import DEFAULT_MODEL, Classifier, Result, classify
from .decode import Decoded, read_image
from .errors import (DecodeError, ImageError, InputError, ModelError, ProviderError,
                     ProviderWarning, XrayInferError, XrayInferWarning)
from .spec import ModelSpec

__version__ = "0.1.0"
__all__ = ["classify", "Classifier", "Result", "ModelSpec", "Decoded", "read_image",
           "DEFAULT_MODEL", "XrayInferError", "InputError", "DecodeError", "ImageError",
           "ModelError", "ProviderError", "XrayInferWarning", "ProviderWarning"]
