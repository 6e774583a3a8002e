"""From inputs (paths, encoded bytes, arrays) to a model batch: the path shared by the
classifier and the trainer, so both see exactly the same pixels."""
import os
from typing import Callable, NamedTuple

import numpy as np

from . import bitdepth
from .decode import Decoded, decode_bytes, read_image
from .errors import DecodeError, InputError
from .preprocess import check_radiograph, preprocess_into
from .scope import age_years


class Encoded(NamedTuple):
    """A file's contents and the name (path or URI) results and errors give it: bytes read
    elsewhere (by Ray's readers, from object storage) scored exactly as the file would be."""
    data: bytes
    name: str


class Fetched(NamedTuple):
    """An input read when its turn comes, in the worker that decodes it (a DICOMweb instance,
    one at a time per worker): ``read()`` returns its bytes or raises InputError."""
    name: str
    read: Callable[[], bytes]


#: Encoded file contents.
ENCODED = (bytes, bytearray, memoryview)
#: What counts as one input (not an iterable of inputs) where a single one may be passed.
SINGLE_INPUT = (str, os.PathLike, np.ndarray, Decoded, Encoded, Fetched, *ENCODED)


def source_name(item, index):
    """How an input is named in results and errors: its path, or ``<array i>``."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, (Encoded, Fetched)):
        return item.name
    if isinstance(item, ENCODED):
        return f"<bytes {index}>"
    return f"<array {index}>"


def decode_input(item, source, target=None, max_value=None):
    """A ``Decoded`` scan for a path, encoded bytes, a 2-D array or a ``Decoded``; ``target``
    and ``max_value`` as in ``read_image`` (a uint16 array declares no range: it gets the same
    rule as a 16-bit file that declares none)."""
    if isinstance(item, Decoded):
        return item
    if isinstance(item, Encoded):
        return decode_bytes(bytes(item.data), item.name, target, max_value)
    if isinstance(item, Fetched):
        return decode_bytes(item.read(), item.name, target, max_value)
    if isinstance(item, (str, os.PathLike)):
        return read_image(item, target, max_value)
    if isinstance(item, ENCODED):
        return decode_bytes(bytes(item), source, target, max_value)
    if isinstance(item, np.ndarray):
        if item.dtype == np.uint16 and item.size:
            return Decoded(item, bitdepth.maxval(item, None, max_value, source))
        return Decoded(item, None)
    raise InputError(source, f"unsupported input type {type(item).__name__} (expected a path, "
                             f"bytes, Encoded, a 2-D array or Decoded)")


def prepare_input(item, out, spec, source, gate=None, reduced=True, max_value=None):
    """Decode, check and preprocess one input into ``out``; ``reduced``: a large JPEG may be
    decoded at a reduced size (``preprocess.jpeg_scale``), else always at full size;
    ``max_value``: the maximum of 16-bit inputs that declare none (``xray_infer.bitdepth``).

    Returns ``(error, shape, age)``: ``(None, (height, width), age)`` of the scan, where
    ``age`` is the patient's age in years its DICOM header states (None: no header, or no age
    in it; only computed with a ``gate``, a ``scope.Gate``), or ``(InputError, None, None)``,
    an ``OutOfScope`` where ``gate`` refused its DICOM metadata. Never raises for a bad input:
    one bad scan must not sink a batch.
    """
    try:
        try:
            decoded = decode_input(item, source, spec.input_size if reduced else None,
                                   max_value)
        except DecodeError as e:  # pixels refused: a header out of scope still says so
            if gate is not None and e.attributes is not None:
                gate.check_metadata(e.attributes, source)
            raise
        if gate is not None:  # the header first: cheapest, and it names what is wrong
            gate.check_metadata(decoded.attributes, source)
        check_radiograph(decoded.pixels, source, decoded.shape)
        preprocess_into(decoded.pixels, out, mean=spec.mean, std=spec.std,
                        maxval=decoded.maxval, source=source)  # also checks shape and values
        if gate is None:
            return None, decoded.shape, None
        gate.check_image(decoded.pixels, source, decoded.colour)
        return None, decoded.shape, age_years(decoded.attributes or {})
    except InputError as e:
        return e, None, None
    except Exception as e:  # anything else a decoder throws is still this input's failure
        return InputError(source, f"{type(e).__name__}: {e}"), None, None


def preprocess_batch(items, spec, *, executor=None, start=0, gate=None, reduced=True,
                     max_value=None):
    """Preprocess ``items`` into a new float32 ``(N, 1, S, S)`` batch for ``spec``.

    Returns ``(batch, errors, shapes, ages)``: ``errors[i]`` is None, or the InputError for item
    ``i`` (its slot in ``batch`` is then undefined; an OutOfScope where ``gate`` refused it);
    ``shapes[i]`` is the scan's ``(height, width)`` before resizing (None for a failed item);
    ``ages[i]`` the age its DICOM header states (``prepare_input``).
    ``executor`` spreads the items over its threads (the kernel releases the GIL); ``start`` is
    the index of ``items[0]`` in a longer input, for the ``<array i>`` names; ``reduced`` and
    ``max_value`` as in ``prepare_input``.
    """
    size = spec.input_size
    batch = np.empty((len(items), 1, size, size), np.float32)

    def one(i):
        return prepare_input(items[i], batch[i, 0], spec, source_name(items[i], start + i),
                             gate, reduced, max_value)

    run = executor.map if executor is not None else map
    done = list(run(one, range(len(items))))
    errors, shapes, ages = zip(*done) if done else ((), (), ())
    return batch, list(errors), list(shapes), list(ages)
