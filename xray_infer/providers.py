"""Choosing ONNX Runtime execution providers."""
import ctypes.util
import warnings

import onnxruntime as ort

from .errors import ProviderError, ProviderWarning

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def name(p):
    """The provider's name, for a name or a ``(name, options)`` entry."""
    return p[0] if isinstance(p, tuple) else p


def resolve(requested=None):
    """The provider list to create a session with.

    ``None`` prefers TensorRT (only when its runtime library is installed), then CUDA, then CPU.
    An explicit list is checked against ``onnxruntime.get_available_providers()``; entries are
    names or ``(name, options)`` tuples.
    """
    available = ort.get_available_providers()
    if requested is None:
        chosen = []
        if "TensorrtExecutionProvider" in available and ctypes.util.find_library("nvinfer"):
            chosen.append("TensorrtExecutionProvider")
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
        return chosen + ["CPUExecutionProvider"]
    if isinstance(requested, (str, tuple)):
        requested = [requested]
    requested = list(requested)
    if not requested:
        raise ProviderError("providers must name at least one execution provider")
    unknown = [name(p) for p in requested if name(p) not in available]
    if unknown:
        raise ProviderError(f"execution provider(s) {', '.join(unknown)} not available in this "
                            f"onnxruntime build; available: {', '.join(available)}")
    return requested


def strict_float32(p):
    """``p``, with CUDA told to keep float32 arithmetic in float32.

    ONNX Runtime's CUDA provider runs float32 convolutions in TF32 (a 10-bit mantissa) unless
    ``use_tf32`` is 0; on an H100 that moved probabilities of the bundled model by 1e-3 against
    the CPU. A float32 model here computes in float32; the float16 variant is the fast path.
    Options given explicitly as ``(name, options)`` are left as they are.
    """
    return ("CUDAExecutionProvider", {"use_tf32": "0"}) if p == "CUDAExecutionProvider" else p


def prepare(providers):
    """Load the CUDA/cuDNN libraries that onnxruntime-gpu needs, when a GPU provider is used."""
    if any(name(p) in GPU_PROVIDERS for p in providers) and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def check_active(requested, active):
    """Warn when a requested GPU provider did not make it into the session."""
    for p in requested:
        if name(p) in GPU_PROVIDERS and name(p) not in active:
            warnings.warn(f"{name(p)} was requested but is not active (session runs on "
                          f"{', '.join(active)}); check the CUDA/cuDNN installation",
                          ProviderWarning, stacklevel=3)
