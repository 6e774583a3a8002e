"""Batched, pipelined classification through one ONNX Runtime session."""
import os
from collections import deque
from collections.abc import Iterable, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnxruntime as ort

from .batch import SINGLE_INPUT, Encoded, Fetched, preprocess_batch, source_name
from .bitdepth import check_max_value
from .errors import ModelError, OutOfScope
from .heatmap import upsample
from .model import DEFAULT_MODEL, choose_variant, load_model
from . import providers as _providers
from .providers import resolve
from .options import ScoringOptions as _O
from .decode import Decoded
from .result import Result
from .scope import Gate, Scope, require_gate
from .spec import DECODE_MODES, batch_size_for, softmax


def _check_count(name, value, optional=False):
    if optional and value is None:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _chunks(iterable, n):
    """Lists of ``n`` inputs, the last shorter. Where the iterable fails part way (a listing
    that breaks off), the inputs it gave before come first, then its error."""
    it, chunk = iter(iterable), []
    while True:
        try:
            item = next(it)
        except StopIteration:
            break
        except Exception as e:
            if chunk:
                yield chunk
            raise e
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


#: What can be classified: a path, a file's bytes, a 2-D array, or a decoded or encoded scan.
Input = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, Decoded,
              Encoded, Fetched]


def _result(future, poll=0.2):
    """``future.result()``, waited for in short steps: a signal (Ctrl-C) that the kernel hands
    to a worker thread cannot wake a main thread blocked on a lock, and its Python handler
    only runs once the main thread runs again."""
    while True:
        try:
            return future.result(timeout=poll)
        except FutureTimeout:  # concurrent.futures' own before Python 3.11
            continue

class Classifier:
    """One ONNX Runtime session and the model's spec, reused for any number of inputs.

    Parameters
    ----------
    model : str or Path, optional
        An ONNX file exported by ``python -m trainer export``; the bundled model when omitted.
    providers : list, optional
        ONNX Runtime execution providers. Default: CUDA when available (TensorRT first when its
        runtime is installed), then CPU.
    batch_size : int, optional
        Images per inference call (default: ``CPU_BATCH_SIZE`` on the CPU, ``DEFAULT_BATCH_SIZE``
        on a GPU).
    threads : int, optional
        ONNX Runtime intra-op threads per inference call (default: 1 on the CPU, where the
        workers run calls side by side; ONNX Runtime's choice on a GPU).
    workers : int, optional
        Threads decoding and preprocessing upcoming batches, and on the CPU scoring them too
        (default: the number of CPUs).
    heatmaps : bool
        Give every classified Result a ``heatmap`` (needs a model exported with class
        activation maps; ModelError otherwise). Off by default, and then it costs nothing.
    precision : str
        ``"auto"``: the model's float16 variant on CUDA, its int8 variant on a CPU with int8
        dot-product instructions (where the variants exist), else the model itself;
        ``"float32"``, ``"float16"`` or ``"int8"``: that one. See ``xray_infer.load_model``;
        ``variant`` says which runs and why.
    decode : str
        ``"reduced"`` (the default): a JPEG much larger than the model's input is decoded at
        a reduced size (``preprocess.jpeg_scale``; measured against full-size decoding in
        ``docs/benchmarks.md``); ``"full"``: every image at its full size.
    max_value : float, optional
        The maximum of 16-bit inputs (PNG, TIFF, uint16 arrays) that declare no range of their
        own, e.g. 4095 for 12-bit values; without it the range is inferred as DICOM's
        BitsStored would (``xray_infer.bitdepth``, docs/inputs.md). 8-bit images and DICOM are
        not affected.
    scope : bool or str
        On (the default): inputs the model was not made for get no label (``status``
        ``"out_of_scope"``): DICOM whose Modality, BodyPartExamined, ViewPosition or patient age
        lie outside the population the model declares, any image unlike its training
        radiographs, and, where no DICOM header states the patient's age, a film that looks
        like an adult's (the model's adult head). Off (``False`` / ``"off"``): every decodable
        radiograph gets a label, for research on other populations; each Result records which.
    ages : (int, int), optional
        With scope on: the accepted patient ages in whole years, inclusive, instead of the
        model's ``population["accepted_ages"]``; a range reaching 18 (``scope.ADULT_AGE``)
        also turns the adult head off.
    """

    @classmethod
    def from_options(cls, options: _O, **changes: Any) -> "Classifier":
        """A Classifier from a ``ScoringOptions`` record, ``changes`` applied."""
        return cls(**options.changed(**changes))

    # the defaults are ScoringOptions' (options.py), the one place they are set
    def __init__(self, model: "str | os.PathLike[str] | None" = _O.model, *,
                 providers: "Sequence[str] | None" = _O.providers,
                 batch_size: "int | None" = _O.batch_size, threads: "int | None" = _O.threads,
                 workers: "int | None" = _O.workers, heatmaps: bool = _O.heatmaps,
                 precision: str = _O.precision, scope: "bool | str" = _O.scope,
                 ages: "tuple[int, int] | None" = _O.ages, decode: str = _O.decode,
                 max_value: "int | None" = _O.max_value) -> None:
        _check_count("batch_size", batch_size, optional=True)
        self.max_value = None if max_value is None else check_max_value(max_value)
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.decode = decode
        _check_count("threads", threads, optional=True)
        _check_count("workers", workers, optional=True)
        self.model_path = Path(model) if model is not None else DEFAULT_MODEL
        self.workers = workers or os.cpu_count() or 1
        requested = resolve(providers)
        self.variant = choose_variant(self.model_path, requested, precision)
        on_cpu = _providers.name(requested[0]) == "CPUExecutionProvider"
        # On the CPU the workers run inference calls side by side, one thread each (see
        # _submit); threads that ONNX Runtime added would only wait on each other, and by
        # default they spin-wait between runs, which cost 16% end to end (docs/benchmarks.md).
        self.threads = threads or (1 if on_cpu else None)  # None: ONNX Runtime's choice
        self.session, self.spec = load_model(
            self.model_path, providers=requested, threads=self.threads,
            precision=self.variant.precision, spin=not on_cpu)
        self.providers = self.session.get_providers()
        self._on_cpu = self.providers[0] == "CPUExecutionProvider"
        self.batch_size = batch_size_for(self._on_cpu, batch_size)
        # On CUDA a batch goes to the device once and the outputs stay there until the small
        # arrays are copied back (ONNX Runtime's I/O binding); elsewhere plain session.run.
        self._device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else None
        # cuDNN searches convolution algorithms again for every new input shape; a short last
        # batch (or one with failed inputs) alternating with full ones cost 6x end to end on an
        # H100 (docs/benchmarks.md). On CUDA every batch is padded to one shape; on the CPU the
        # padding would only add work.
        self._pad = self._device is not None
        if heatmaps and not self.spec.heatmap_output:
            raise ModelError(f"{self.model_path}: this model has no class activation map output, "
                             f"so heatmaps are not available (export it again with "
                             f"`python -m trainer export`)")
        self.heatmaps = bool(heatmaps)
        self.scope = Scope.of(scope, ages)
        require_gate(self.spec, self.scope, self.model_path)
        self.gate = Gate(self.spec, self.scope) if self.scope.enabled else None

    @property
    def class_names(self):
        return self.spec.class_names

    # -- inference -----------------------------------------------------------------------------
    def predict(self, batch):
        """Class probabilities, float64 ``(N, C)``, for a preprocessed ``(N, 1, S, S)`` batch.

        A row whose logits are not all finite comes back as NaN; ``iter_classify`` turns it
        into an error, never a label.
        """
        return self._run(batch)[0]

    def _run(self, batch, rows=None):
        """(probabilities, class maps or None, gate outputs or None) for a batch; maps only
        with ``heatmaps``; with the scope gate on, the gate outputs are (scope distances, adult
        scores or None). ``rows``: with padding on, the batch goes to the session padded to this
        many rows."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = len(batch)
        if self._pad and rows and n < rows:
            batch = np.concatenate([batch, np.zeros((rows - n, *batch.shape[1:]), np.float32)])
        gates = [self.spec.scope_output] if self.gate else []
        if self.gate and self.gate.adult_threshold is not None:
            gates.append(self.spec.adult_output)
        names = [self.spec.output_name] + ([self.spec.heatmap_output] if self.heatmaps else []) \
            + gates
        if self._device:
            outputs = self._run_on_device(batch, names)
        else:
            outputs = self.session.run(names, {self.spec.input_name: batch})
        logits = outputs[0][:n]
        finite = np.isfinite(logits).all(axis=1)
        probs = np.full(logits.shape, np.nan)
        probs[finite] = softmax(logits[finite])
        maps = outputs[1][:n] if self.heatmaps else None
        if not gates:
            return probs, maps, None
        scores = [o[:n].astype(np.float64) for o in outputs[len(names) - len(gates):]]
        return probs, maps, (scores[0], scores[1] if len(scores) > 1 else None)

    def _run_on_device(self, batch, names):
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.spec.input_name,
                                    ort.OrtValue.ortvalue_from_numpy(batch, self._device, 0))
        for name in names:
            binding.bind_output(name, self._device)
        self.session.run_with_iobinding(binding)
        return [value.numpy() for value in binding.get_outputs()]

    def _prepare(self, start, chunk, executor=None):
        """(batch, errors, shapes, header ages) of ``preprocess_batch`` for a chunk of inputs."""
        return preprocess_batch(chunk, self.spec, executor=executor, start=start, gate=self.gate,
                                reduced=self.decode == "reduced", max_value=self.max_value)

    def _infer(self, prepared, rows):
        """(errors, shapes, header ages, indices of the good inputs, ``_run``'s outputs for
        them)."""
        batch, errors, shapes, ages = prepared
        good = [i for i, e in enumerate(errors) if e is None]
        if len(good) == len(errors):
            outputs = self._run(batch, rows)  # the common case: no copy
        else:
            outputs = self._run(batch[good], rows) if good else (None, None, None)
        return errors, shapes, ages, good, outputs

    def _results(self, start, chunk, scored):
        errors, shapes, ages, good, (probs, maps, gates) = scored
        row = dict(zip(good, range(len(good))))
        names, scope = self.spec.class_names, self.scope.label()
        for i, item in enumerate(chunk):
            source = source_name(item, start + i)
            error = errors[i]
            if error is None and gates is not None:
                distances, adult = gates
                try:
                    self.gate.check_distance(distances[row[i]], source)
                    if adult is not None:
                        self.gate.check_adult(adult[row[i]], source, ages[i])
                except OutOfScope as e:
                    error = e
            if isinstance(error, OutOfScope):
                yield Result(source, refusal=error.reason, refused_by=error.gate, scope=scope)
                continue
            if error is not None:
                yield Result(source, error=error.reason, scope=scope)
                continue
            p = probs[row[i]]
            if not np.isfinite(p).all():
                yield Result(source, error="the model returned non-finite scores for this input",
                             scope=scope)
                continue
            k = self.spec.decide(p)
            heatmap = upsample(maps[row[i], k], shapes[i]) if maps is not None else None
            yield Result(source, label=names[k], heatmap=heatmap, scope=scope,
                         probabilities={n: float(v) for n, v in zip(names, p)})

    def _submit(self, start, chunk, rows, workers, device_queue):
        """Start scoring a chunk; returns a function that yields its Results.

        On the CPU a worker takes the whole chunk: it decodes, preprocesses and scores it itself,
        with one ONNX Runtime thread, so a batch stays on one core and in its cache and no
        call's threads wait on each other; one call on all cores, fed by decoding threads, was
        11% slower end to end on two cores (docs/benchmarks.md). With another
        provider the workers share the decoding of each upcoming chunk while it scores the
        current one.
        Results (with their scan-sized heatmaps) are built only as they are taken."""
        if self._on_cpu:
            scored = workers.submit(lambda: self._infer(self._prepare(start, chunk), rows))
            return lambda: self._results(start, chunk, _result(scored))
        prepared = device_queue.submit(self._prepare, start, chunk, workers)
        return lambda: self._results(start, chunk, self._infer(_result(prepared), rows))

    def iter_classify(self, inputs, batch_size=None):
        """Yield one Result per input, in input order, for any iterable of inputs (one that
        raises part way gives the Results of the inputs it gave before, then its error).

        Inputs are paths, encoded file contents (``bytes``, or ``Encoded(bytes, name)`` to be
        named and checked as that file), 2-D arrays (uint8, uint16, or float32 in [0, 1]) or
        ``Decoded`` (pixels with their declared maximum). Inputs that are
        not radiograph-shaped (``preprocess.MIN_SIDE``, ``preprocess.MAX_ASPECT``) or whose
        values leave the declared range get an error.
        Worker threads decode, preprocess and (on the CPU) score upcoming batches while the
        current one is taken; a bounded number wait (two per worker on the CPU, two on a
        device), so memory stays bounded for any input count.
        """
        n = batch_size or self.batch_size
        _check_count("batch_size", n)
        if self._on_cpu and isinstance(inputs, Sized):
            # A short list split so that every worker gets a part (8 inputs in one batch would
            # leave all cores but one idle), never into more parts than there are workers.
            n = min(n, max(1, -(-len(inputs) // self.workers)))
        ahead = 2 * self.workers if self._on_cpu else 2
        pending = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="xray-prep") as workers, \
                ThreadPoolExecutor(1, thread_name_prefix="xray-batch") as device_queue:
            start, chunks = 0, _chunks(inputs, n)
            while True:
                try:
                    chunk = next(chunks, None)
                except Exception:  # the inputs broke off: what was taken is still scored
                    while pending:
                        yield from pending.popleft()()
                    raise
                if chunk is None:
                    break
                pending.append(self._submit(start, chunk, n, workers, device_queue))
                start += len(chunk)
                if len(pending) > ahead:
                    yield from pending.popleft()()
            while pending:
                yield from pending.popleft()()

    def classify(self, inputs: "Input | Iterable[Input]",
                 batch_size: "int | None" = None) -> "list[Result]":
        """Classify ``inputs``: one per Result, in input order.

        Parameters
        ----------
        inputs : path, bytes, array, Decoded or Encoded, or an iterable of them
            A single input is classified as a list of one.
        batch_size : int, optional
            Inputs per model call; by default the classifier's.

        Returns
        -------
        list of Result
            A bad input gets ``error`` (``status == "failed"``), one out of scope ``refusal``;
            the rest are still classified. See ``iter_classify`` to stream.
        """
        if isinstance(inputs, SINGLE_INPUT):
            inputs = [inputs]  # one input, not an iterable of them
        return list(self.iter_classify(inputs, batch_size))


def classify(paths: "Input | Iterable[Input]", **options: Any) -> "list[Result]":
    """Classify images in one call.

    Parameters
    ----------
    paths : path, bytes, array, Decoded or Encoded, or an iterable of them
        What to classify.
    **options
        ``Classifier``'s parameters (``ScoringOptions``' fields).

    Returns
    -------
    list of Result
        In input order: a bad input gets ``error`` set and the rest are still classified.
        For repeated calls create a ``Classifier`` once instead.
    """
    return Classifier.from_options(_O(**options)).classify(paths)
