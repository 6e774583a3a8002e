"""Batched, pipelined classification through one ONNX Runtime session."""
import hashlib
import itertools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import providers as _providers
from .decode import Decoded, read_image
from .errors import InputError, ModelError
from .preprocess import preprocess_into
from .spec import ModelSpec

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.onnx"
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Result:
    """The outcome for one input: a prediction, or the reason there is none.

    ``source`` is the path as given (or ``<array i>`` for in-memory input i). Exactly one of
    ``label`` and ``error`` is set; ``probabilities`` maps every class name to its probability.
    """
    source: str
    label: str = None
    probabilities: dict = None
    error: str = None

    @property
    def ok(self):
        return self.error is None

    def to_dict(self):
        return {"path": self.source, "label": self.label, "probabilities": self.probabilities,
                "error": self.error}


def _load_model_bytes(path):
    """Model bytes, checked against the ``<model>.sha256`` file beside it when there is one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read model file: {e}") from None
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        expected = sidecar.read_text().split()[0].lower()
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ModelError(f"{path}: SHA-256 {actual} does not match {sidecar.name} "
                             f"({expected}); the model file is corrupted or was replaced")
    return data


def _chunks(iterable, n):
    it = iter(iterable)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


class Classifier:
    """One ONNX Runtime session and the model's spec, reused for any number of inputs.

    Parameters
    ----------
    model : str or Path, optional
        An ONNX file exported by ``python -m trainer export``; the bundled model when omitted.
    providers : list, optional
        ONNX Runtime execution providers. Default: CUDA when available (TensorRT first when its
        runtime is installed), then CPU.
    batch_size : int
        Images per inference call.
    threads : int, optional
        ONNX Runtime intra-op threads (default: ONNX Runtime's choice, all cores).
    workers : int, optional
        Threads decoding and preprocessing upcoming batches while the current one runs
        (default: the number of CPUs).
    """

    def __init__(self, model=None, *, providers=None, batch_size=DEFAULT_BATCH_SIZE, threads=None,
                 workers=None):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model_path = Path(model) if model is not None else DEFAULT_MODEL
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 1
        requested = _providers.resolve(providers)
        _providers.prepare(requested)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        data = _load_model_bytes(self.model_path)
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=requested)
        except Exception as e:  # onnxruntime raises several unrelated types for bad files
            raise ModelError(f"{self.model_path}: not a loadable ONNX model: {e}") from None
        self.providers = self.session.get_providers()
        _providers.check_active(requested, self.providers)
        self.spec = ModelSpec.from_metadata(self.session.get_modelmeta().custom_metadata_map,
                                            str(self.model_path))
        self._check_signature()
        self._io_binding = "CUDAExecutionProvider" in self.providers

    def _check_signature(self):
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        s = self.spec
        if [i.name for i in inputs] != [s.input_name] or [o.name for o in outputs] != [s.output_name]:
            raise ModelError(f"{self.model_path}: graph inputs/outputs "
                             f"{[i.name for i in inputs]}/{[o.name for o in outputs]} do not "
                             f"match the metadata ({s.input_name}/{s.output_name})")
        shape = inputs[0].shape
        if len(shape) != 4 or list(shape[1:]) != [1, s.input_size, s.input_size]:
            raise ModelError(f"{self.model_path}: input shape {shape} does not match the "
                             f"metadata (N, 1, {s.input_size}, {s.input_size})")
        out = outputs[0].shape
        if len(out) != 2 or out[1] != len(s.class_names):
            raise ModelError(f"{self.model_path}: output shape {out} does not match "
                             f"{len(s.class_names)} classes")

    @property
    def class_names(self):
        return self.spec.class_names

    # -- preprocessing -------------------------------------------------------------------------
    def _prepare(self, item, index, out):
        """Decode/preprocess one input into ``out``; returns None or the error message."""
        source = self._source(item, index)
        try:
            if isinstance(item, (str, os.PathLike)):
                decoded = read_image(source)
            elif isinstance(item, Decoded):
                decoded = item
            elif isinstance(item, np.ndarray):
                decoded = Decoded(item, None)
            else:
                return f"unsupported input type {type(item).__name__} (expected a path or array)"
            preprocess_into(decoded.pixels, out, mean=self.spec.mean, std=self.spec.std,
                            maxval=decoded.maxval, source=source)
            return None
        except InputError as e:
            return e.reason
        except Exception as e:  # one bad input never sinks the batch
            return f"{type(e).__name__}: {e}"

    @staticmethod
    def _source(item, index):
        if isinstance(item, (str, os.PathLike)):
            return os.fspath(item)
        return f"<array {index}>"

    # -- inference -----------------------------------------------------------------------------
    def predict(self, batch):
        """Class probabilities for a preprocessed float32 ``(N, 1, S, S)`` batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.spec.input_name, batch)
            binding.bind_output(self.spec.output_name, "cpu")
            self.session.run_with_iobinding(binding)
            logits = binding.copy_outputs_to_cpu()[0]
        else:
            logits = self.session.run([self.spec.output_name], {self.spec.input_name: batch})[0]
        z = logits.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def _finish(self, start, chunk, batch, futures):
        errors = [f.result() for f in futures]
        good = [i for i, e in enumerate(errors) if e is None]
        if len(good) == len(chunk):
            probs = self.predict(batch)  # the common case: no copy
        else:
            probs = self.predict(batch[good]) if good else None
        row = dict(zip(good, range(len(good))))
        names = self.spec.class_names
        for i, item in enumerate(chunk):
            source = self._source(item, start + i)
            if errors[i] is not None:
                yield Result(source, error=errors[i])
            else:
                p = probs[row[i]]
                yield Result(source, label=names[int(p.argmax())],
                             probabilities={n: float(v) for n, v in zip(names, p)})

    def iter_classify(self, inputs, batch_size=None):
        """Yield one Result per input, in input order, for any iterable of inputs.

        Inputs are paths, 2-D arrays (8-bit, 16-bit or float32 in [0, 1]) or ``Decoded``.
        Upcoming batches are decoded and preprocessed on worker threads while the current
        batch runs; at most two batches wait, so memory stays bounded for any input count.
        """
        n = batch_size or self.batch_size
        size = self.spec.input_size
        pending = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="xray-prep") as pool:
            start = 0
            for chunk in _chunks(inputs, n):
                batch = np.empty((len(chunk), 1, size, size), np.float32)
                futures = [pool.submit(self._prepare, item, start + i, batch[i, 0])
                           for i, item in enumerate(chunk)]
                pending.append((start, chunk, batch, futures))
                start += len(chunk)
                if len(pending) > 2:
                    yield from self._finish(*pending.popleft())
            while pending:
                yield from self._finish(*pending.popleft())

    def classify(self, inputs, batch_size=None):
        """List of Results, one per input, in input order. See ``iter_classify``."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray)):
            inputs = [inputs]
        return list(self.iter_classify(inputs, batch_size))


def classify(paths, *, model=None, batch_size=DEFAULT_BATCH_SIZE, providers=None, threads=None,
             workers=None):
    """Classify images in one call; see ``Classifier`` for the parameters.

    Returns a list of ``Result`` in input order: a bad input gets ``error`` set and the rest are
    still classified. For repeated calls create a ``Classifier`` once instead.
    """
    clf = Classifier(model, providers=providers, batch_size=batch_size, threads=threads,
                     workers=workers)
    return clf.classify(paths)
