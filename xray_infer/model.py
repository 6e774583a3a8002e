"""Opening a model: the one place that turns an ONNX file into a session and its ModelSpec."""
import hashlib
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Dict, NamedTuple, Optional

import onnxruntime as ort

from . import providers as _providers
from .errors import ModelError
from .spec import PRECISIONS, ModelSpec

#: The model shipped with the package; its SHA-256 sidecar must exist and match.
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.onnx"


def sidecar_path(path):
    return Path(path).with_name(Path(path).name + ".sha256")


def write_sidecar(path):
    """Write ``<model>.sha256`` for the model file at ``path`` (what ``read_model_bytes``
    checks)."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


#: File-name infix of each precision's variant: ``name.fp16.onnx`` beside ``name.onnx``.
_INFIX = {"float32": "", "float16": ".fp16", "int8": ".int8"}


def variant_path(path, precision):
    """Where a model's variant in ``precision`` lives (``path`` itself for float32)."""
    path = Path(path)
    return path.with_name(path.stem + _INFIX[precision] + path.suffix)


class Variant(NamedTuple):
    """The model file a session opens, its precision, and why it was chosen."""
    path: Path
    precision: str
    reason: str


def choose_variant(path, providers, precision="auto"):
    """Which variant of the model at ``path`` to open for ``providers`` (as resolved by
    ``providers.resolve``) and the requested ``precision``.

    ``"auto"``: float16 on CUDA, int8 on the CPU where ``cpu.int8_dot_product`` finds the
    instructions that make it faster, where those variants exist; float32 otherwise. An
    explicit precision is that variant, or ModelError when it does not exist.
    """
    from .cpu import int8_dot_product
    path = Path(path)
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        chosen = variant_path(path, precision)
        if precision != "float32" and not chosen.exists():
            raise ModelError(f"{path}: no {precision} variant ({chosen.name}) beside it")
        return Variant(chosen, precision, "requested")
    first = _providers.name(providers[0])
    if first == "CUDAExecutionProvider":
        if variant_path(path, "float16").exists():
            return Variant(variant_path(path, "float16"), "float16", "auto: float16 on CUDA")
        return Variant(path, "float32", "auto: on CUDA, no float16 variant")
    if first != "CPUExecutionProvider":
        return Variant(path, "float32", f"auto: float32 on {first}")
    if not variant_path(path, "int8").exists():
        return Variant(path, "float32", "auto: on the CPU, no int8 variant")
    fast, why = int8_dot_product()
    return Variant(variant_path(path, "int8") if fast else path, "int8" if fast else "float32",
                   f"auto: {why}")


def _expected_digest(sidecar):
    try:
        text = sidecar.read_text()
    except OSError as e:
        raise ModelError(f"{sidecar}: cannot read the SHA-256 file: {e}") from None
    words = text.split()
    digest = words[0].lower() if words else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ModelError(f"{sidecar}: not a SHA-256 file (expected 64 hex digits, then the "
                         f"file name)")
    return digest


#: SHA-256 of model files read, by (path, size, modification time): a model is hashed once
#: however many things need its digest (the sidecar check, result UIDs, reports).
_DIGESTS: Dict[tuple, str] = {}


def _key(path):
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def model_digest(path):
    """The SHA-256 (hex) of the model file at ``path``."""
    key = _key(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _DIGESTS[key]


def read_model_bytes(path, require_digest=False):
    """The model's bytes, checked against ``<model>.sha256`` (required when ``require_digest``,
    otherwise checked only where it exists)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read model file: {e}") from None
    sidecar = sidecar_path(path)
    if require_digest and not sidecar.exists():
        raise ModelError(f"{path}: {sidecar.name} is missing; the bundled model is always "
                         f"checked against it")
    key = _key(path)
    actual = _DIGESTS[key] = hashlib.sha256(data).hexdigest()
    if sidecar.exists():
        expected = _expected_digest(sidecar)
        if actual != expected:
            raise ModelError(f"{path}: SHA-256 {actual} does not match {sidecar.name} "
                             f"({expected}); the model file is corrupted or was replaced")
    return data


def check_signature(session, spec, source):
    """The graph's inputs and outputs must be what the spec says."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names_in, names_out = [i.name for i in inputs], [o.name for o in outputs]
    if names_in != [spec.input_name] or spec.output_name not in names_out:
        raise ModelError(f"{source}: graph inputs/outputs {names_in}/{names_out} do not match "
                         f"the metadata ({spec.input_name}/{spec.output_name})")
    shape = inputs[0].shape
    if len(shape) != 4 or list(shape[1:]) != [1, spec.input_size, spec.input_size]:
        raise ModelError(f"{source}: input shape {shape} does not match the metadata "
                         f"(N, 1, {spec.input_size}, {spec.input_size})")
    out = outputs[names_out.index(spec.output_name)].shape
    if len(out) != 2 or out[1] != len(spec.class_names):
        raise ModelError(f"{source}: output shape {out} does not match "
                         f"{len(spec.class_names)} classes")
    if spec.heatmap_output:
        if spec.heatmap_output not in names_out:
            raise ModelError(f"{source}: metadata names a heatmap output "
                             f"{spec.heatmap_output!r} that the graph lacks ({names_out})")
        maps = outputs[names_out.index(spec.heatmap_output)].shape
        if len(maps) != 4 or maps[1] != len(spec.class_names):
            raise ModelError(f"{source}: heatmap output shape {maps} is not (N, "
                             f"{len(spec.class_names)}, h, w)")
    for what, name in (("scope", spec.scope_output), ("adult head", spec.adult_output)):
        if not name:
            continue
        if name not in names_out:
            raise ModelError(f"{source}: metadata names a {what} output {name!r} that the graph "
                             f"lacks ({names_out})")
        if len(outputs[names_out.index(name)].shape) != 1:
            raise ModelError(f"{source}: {what} output {name!r} is not (N,)")


def load_model(path: "str | os.PathLike[str] | None" = None, *,
               providers: "Sequence[str] | None" = None, threads: Optional[int] = None,
               precision: str = "auto",
               spin: bool = True) -> "tuple[ort.InferenceSession, ModelSpec]":
    """Open an exported model.

    Parameters
    ----------
    path : str or path-like, optional
        The model; by default the bundled one, which must match its SHA-256 file (another
        model is checked against ``<model>.sha256`` where one exists).
    providers : sequence of str, optional
        As in ``providers.resolve`` (default: CUDA when available, else CPU).
    threads : int, optional
        ONNX Runtime's intra-op thread count.
    precision : str
        The variant (``choose_variant``): ``"auto"``, ``"float32"`` (the model itself),
        ``"float16"`` or ``"int8"`` (its variants beside it, ``variant_path``).
    spin : bool
        False lets ONNX Runtime's threads sleep between runs instead of spin-waiting (for a
        session that shares the CPUs with decoding threads).

    Returns
    -------
    (onnxruntime.InferenceSession, ModelSpec)

    Raises
    ------
    ModelError
        A file that is missing, corrupted, not ONNX, without valid metadata, or whose graph
        does not match its metadata.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL
    requested = _providers.resolve(providers)
    variant = choose_variant(path, requested, precision)
    if variant.precision != "float16":
        requested = [_providers.strict_float32(p) for p in requested]
    bundled = path.resolve() == DEFAULT_MODEL
    data = read_model_bytes(variant.path, require_digest=bundled)
    _providers.prepare(requested)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=requested)
    except Exception as e:  # onnxruntime raises several unrelated types for bad files
        raise ModelError(f"{variant.path}: not a loadable ONNX model: {e}") from None
    _providers.check_active(requested, session.get_providers())
    spec = ModelSpec.from_metadata(session.get_modelmeta().custom_metadata_map,
                                   str(variant.path))
    check_signature(session, spec, variant.path)
    if variant.path != path and spec.precision != variant.precision:
        raise ModelError(f"{variant.path}: named as the {variant.precision} variant, but its "
                         f"metadata says {spec.precision}")
    return session, spec
