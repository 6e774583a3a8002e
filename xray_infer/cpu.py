"""What the CPU can do for an int8 model.

ONNX Runtime's int8 convolutions are fast where the CPU multiplies and adds 8-bit integers in
one instruction (x86 AVX512-VNNI, AVX-VNNI or AMX; Arm's dot-product extension); without them
its documentation warns that int8 can be slower than float32. The answer depends only on the
CPU, never on timing, so the same machine always runs the same variant.
"""
from functools import lru_cache

#: /proc/cpuinfo flags (x86 "flags", Arm "Features") that mean int8 dot products.
_LINUX_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
#: NumPy's names for the same instructions (its detection covers macOS and Windows too).
_NUMPY_FEATURES = ("AVX512VNNI", "ASIMDDP")


def _linux_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


def _numpy_features():
    try:  # NumPy's runtime CPU dispatch table; its location moved in NumPy 2
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return None
    return {name for name, present in __cpu_features__.items() if present}


@lru_cache(maxsize=1)
def int8_dot_product():
    """``(found, why)``: whether this CPU has int8 dot-product instructions, and a line
    naming what was found (or that nothing was)."""
    flags = _linux_flags()
    if flags:
        found = [f for f in _LINUX_FLAGS if f in flags]
        if found:
            return True, f"the CPU has int8 dot products ({', '.join(found)})"
    features = _numpy_features()
    if features:
        found = [f for f in _NUMPY_FEATURES if f in features]
        if found:
            return True, f"the CPU has int8 dot products ({', '.join(found)})"
    if flags is None and features is None:
        return False, "the CPU's instruction set could not be read"
    return False, "the CPU has no int8 dot-product instructions (VNNI, Arm dot product)"
