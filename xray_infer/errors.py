"""Exception and warning hierarchy of xray_infer."""


class XrayInferError(Exception):
    """Base class of every error raised by xray_infer."""


class UsageError(XrayInferError):
    """The request itself cannot be carried out (a source that does not exist, contradicting
    options, an unreachable cluster): reported before any input is scored."""


class InputError(XrayInferError):
    """One input could not be turned into a model input. Names the input and the reason."""

    def __init__(self, source, reason):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class DecodeError(InputError):
    """A file is missing, unreadable, empty, truncated, too large or not a supported image.
    ``attributes``: for a DICOM file whose header was read before its pixels were refused, the
    header values the scope gate reads (its verdict comes first: an MR with palette-colour
    pixels is out of scope, not a failure)."""

    attributes = None


class ImageError(InputError):
    """A decoded array has a shape, dtype or size the preprocessing cannot take."""


class OutOfScope(InputError):
    """An input the model was not made for (another body part, view, modality or population, or
    an image unlike its training radiographs): refused, not failed. ``gate`` names what refused
    it: a DICOM attribute, or ``"image"`` for the image gate."""

    def __init__(self, source, reason, gate):
        super().__init__(source, reason)
        self.gate = gate


class ModelError(XrayInferError):
    """A model file is missing, corrupted, or lacks valid xray_infer metadata."""


class ProviderError(XrayInferError):
    """Requested ONNX Runtime execution providers are not available."""


class XrayInferWarning(UserWarning):
    """Base class of xray_infer warnings."""


class ProviderWarning(XrayInferWarning):
    """A requested execution provider is not active in the created session."""
