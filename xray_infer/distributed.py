"""Scoring on Ray Data, from a laptop to a cluster: the same rows as the in-process engine.

Ray's file readers (``read_binary_files``) read the bytes, locally or from object storage;
actors of ``ClassifyBatch``, each holding one ``Classifier``, decode them with the library's own
decoder (the same checks and errors as for a file read here) and score them; the driver streams
the rows back in input order and checks that every input came back exactly once. Needs the
``ray`` extra (``pip install -e '.[ray]'`` in the source folder).

    >>> from xray_infer.distributed import classify_dataset
    >>> classify_dataset(["s3://bucket/scans/"], output="results.parquet", gpus_per_worker=1)
"""
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from .batch import Encoded
from .decode import check_file
from .errors import DecodeError, UsageError
from .inputs import collect_inputs, is_uri
from .model import load_model
from .classifier import Classifier
from .options import ScoringOptions
from .output import Output, format_for
from .result import Result, Status, arrow_schema, columns, result_from_row
from .scope import Scope
from .spec import batch_size_for

try:
    import pyarrow as pa
    import ray
    import ray.data
except ImportError as e:  # the core library does not need Ray
    raise ImportError("the Ray engine needs Ray Data: install the ray extra (pip install -e "
                      "'.[ray]' in the source folder)") from e


#: Logical CPUs a read task asks for. Reading bytes is I/O; with a whole CPU per read task,
#: actors holding every CPU of a node left no read able to start, and the job waited forever.
READ_CPUS = 0.1
#: Rows handed to an actor per call, in classifier batches: larger calls keep the classifier's
#: decode/inference pipeline full for longer between calls.
BATCHES_PER_CALL = 4


def _host_port(address):
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def connect(address=None, **init_args):
    """Join the Ray cluster at ``address`` (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``) or,
    without one, start a local Ray; a driver already connected keeps its connection.

    An address that accepts no connection within 5 s is a UsageError, before Ray's own
    reconnection attempts (which wait a minute or more) and before any work starts.
    """
    if ray.is_initialized():
        return
    if address and address != "auto":
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as e:
            raise UsageError(f"cannot reach a Ray cluster at {address}: "
                             f"{e.strerror or e}") from None
    ray.init(address=address, configure_logging=False, log_to_driver=False, **init_args)


#: The terminal colour codes Ray puts in its messages and log lines.
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def failure_reason(error):
    """One line saying why a Ray job failed, for a person. Ray wraps a worker's exception in
    its own, each carrying tracebacks in its message; this takes the chain's first message
    line, or, where a worker could not import this package, says what to install there."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        inner = getattr(error, "cause", None)
        error = inner if isinstance(inner, BaseException) else error.__cause__
    # each exception's message lines, without the colour codes Ray puts in them
    lines = [(e, [COLOUR.sub("", line).strip() for line in str(e).splitlines()
                  if line.strip()]) for e in chain]
    missing = next((line for _, text in lines for line in text
                    if line.startswith(("ModuleNotFoundError", "ImportError"))
                    and "xray_infer" in line), None)
    if missing:
        from . import __version__
        return (f"the Ray workers could not start: they cannot import xray_infer ({missing}); "
                f"install xray-infer {__version__} with the ray extra in the Python "
                f"environment of every node")
    first = next(((e, text[0]) for e, text in lines if text), None)
    return f"{type(first[0]).__name__}: {first[1]}" if first else type(chain[0]).__name__


def plan(workers=None, gpus_per_worker=0.0, cpus_per_worker=None):
    """``(workers, cpus_per_worker)`` for the connected cluster, node by node.

    Without ``workers``: one per ``gpus_per_worker`` share of each node's GPUs, else one per
    CPU. Without ``cpus_per_worker``: workers spread evenly over the nodes that can hold them,
    each getting its share of the smallest such node's CPUs, less a little for the read tasks
    (each worker decodes on that many threads). A plan whose workers cannot all be placed is a
    UsageError: Ray would otherwise wait for resources that never come.
    """
    return place([n["Resources"] for n in ray.nodes() if n.get("Alive")], workers,
                 gpus_per_worker, cpus_per_worker)


def place(nodes, workers=None, gpus_per_worker=0.0, cpus_per_worker=None):
    """``plan`` for ``nodes``, a list of the live nodes' resources (``{"CPU": 16, "GPU": 1}``)."""
    if gpus_per_worker < 0 or (workers is not None and workers < 1):
        raise UsageError("workers must be at least 1 and gpus_per_worker at least 0")
    if gpus_per_worker:
        total = sum(r.get("GPU", 0.0) for r in nodes)
        nodes = [r for r in nodes if r.get("GPU", 0.0) >= gpus_per_worker]
        if not nodes:
            raise UsageError(f"gpus_per_worker {gpus_per_worker:g}: no node of the Ray "
                             f"cluster has that many GPUs (it has {total:g} GPU(s) in all)")
        workers = workers or sum(int(r["GPU"] // gpus_per_worker) for r in nodes)
    workers = workers or max(1, int(sum(r.get("CPU", 0.0) for r in nodes)))
    if cpus_per_worker is None:
        per_node = -(-workers // len(nodes))
        cpus_per_worker = round(min(
            (r.get("CPU", 0.0) - min(1.0, max(2 * READ_CPUS, 0.1 * r.get("CPU", 0.0))))
            / per_node for r in nodes), 2)
    fit = 0
    if cpus_per_worker > 0:
        for r in nodes:
            slots = int((r.get("CPU", 0.0) - READ_CPUS) // cpus_per_worker)
            if gpus_per_worker:
                slots = min(slots, int(r["GPU"] // gpus_per_worker))
            fit += max(0, slots)
    if fit < workers:
        raise UsageError(f"{workers} worker(s) of {cpus_per_worker:g} CPU(s)"
                         + (f" and {gpus_per_worker:g} GPU(s)" if gpus_per_worker else "")
                         + f" do not fit in the Ray cluster's nodes (room for {fit}, beside "
                           f"the read tasks)")
    return workers, cpus_per_worker


class ClassifyBatch:
    """The callable class for ``Dataset.map_batches``: one Classifier per actor.

    Takes batches with the ``bytes`` and ``path`` columns of ``read_binary_files(...,
    include_paths=True)`` and returns the output columns (path, label, ``p_<class>``, error)
    as a pyarrow Table; a bad input is an error row, never an exception. ``scheme`` restores
    the ``s3://``-style prefix that Ray's paths leave out, so rows name inputs as they were
    given.
    """

    def __init__(self, options, *, threads, scheme=None):
        # ``threads``: the actor's CPUs, one worker thread each (Classifier's ``workers``)
        self.clf = Classifier.from_options(options, workers=threads, heatmaps=False)
        self.prefix = f"{scheme}://" if scheme else ""
        self.schema = arrow_schema(self.clf.class_names)

    def __call__(self, batch):
        items = [Encoded(data, self.prefix + path)
                 for data, path in zip(batch["bytes"], batch["path"])]
        results = self.clf.classify(items)
        return pa.table(columns(results, self.clf.class_names), schema=self.schema)


def build_dataset(inputs, *, workers=None, gpus_per_worker=0.0, cpus_per_worker=None,
                  **options):
    """The Ray Dataset of result rows for ``inputs`` (files or URIs of one filesystem, already
    expanded), in input order. ``workers``: Ray actors (each with ``cpus_per_worker`` CPUs, one
    scoring thread each, and ``gpus_per_worker`` of a GPU); ``options``: scoring options
    (``options.ScoringOptions``; ``workers`` there is the actors' CPUs). For pipelines of your
    own, e.g. ``.write_parquet("s3://...")`` spread over the workers. Needs a connected Ray
    (``connect``)."""
    options = ScoringOptions(**options)  # an unknown option: TypeError naming it
    workers, cpus = plan(workers, gpus_per_worker, cpus_per_worker)
    schemes = {p.split("://", 1)[0] if is_uri(p) else None for p in inputs}
    if len(schemes) > 1:
        raise UsageError(f"inputs mix filesystems ({', '.join(sorted(map(str, schemes)))}); "
                         f"run one job per filesystem")
    scheme = schemes.pop() if schemes else None
    if options.providers is None and not gpus_per_worker:
        # a worker without a GPU share must not take one
        options = replace(options, providers=["CPUExecutionProvider"])
    ds = ray.data.read_binary_files(list(inputs), include_paths=True, num_cpus=READ_CPUS)
    # this dataset's own copy of the context: the driver's other datasets are left alone
    ds.context.execution_options.preserve_order = True  # rows come back in input order
    ds.context.enable_progress_bars = False  # the caller reports progress
    return ds.map_batches(
        # a Ray block: a few of the workers' batches, by the classifier's own rule
        ClassifyBatch, batch_size=batch_size_for(
            not gpus_per_worker, options.batch_size) * BATCHES_PER_CALL,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus,
        num_gpus=gpus_per_worker or None,
        fn_constructor_args=(options,),
        fn_constructor_kwargs=dict(threads=max(1, round(cpus)), scheme=scheme))


def _screen(inputs):
    """``[(input, error or None)]``: local files that cannot be read (folders named like
    images, dangling links, over the size limit, unreadable) are reported here exactly as the
    in-process engine reports them, so that Ray only reads what it can. Threads, because on a
    network filesystem each check waits on a round trip."""
    def one(item):
        if is_uri(item):
            return item, None
        try:
            check_file(item)
            return item, None
        except DecodeError as e:
            return item, e.reason
    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(one, inputs))


def iter_results(inputs, *, address=None, **options):
    """Yield one Result per input, in input order, scored on Ray (options as
    ``build_dataset``). Raises RuntimeError if Ray's output loses, repeats or reorders an
    input, rather than passing such a result set on."""
    placement = {k: options.pop(k) for k in ("workers", "gpus_per_worker", "cpus_per_worker")
                 if k in options}
    checked = ScoringOptions(**options)  # unknown options: TypeError, at once
    scope = Scope.of(checked.scope, checked.ages).label()
    connect(address)
    screened = _screen(inputs)
    readable = [item for item, error in screened if error is None]
    rows = iter(())
    if readable:
        rows = iter(build_dataset(readable, **placement, **options).iter_rows())
    for item, error in screened:
        if error is not None:
            yield Result(item, error=error, scope=scope)
            continue
        row = next(rows, None)
        if row is None or row["path"] != item:
            raise RuntimeError(f"the Ray job returned {row and row['path']!r} where {item!r} "
                               f"was due: an input was lost or reordered")
        yield result_from_row(row)
    extra = next(rows, None)
    if extra is not None:
        raise RuntimeError(f"the Ray job returned a row beyond the inputs: {extra['path']!r}")


def classify_dataset(sources, *, output=None, format=None, recursive=False, address=None,
                     **options):
    """Score paths, folders or URIs (``s3://``, ``gs://``, ``file://`` ...) on Ray.

    Returns the list of Results in input order or, with ``output`` (a path or URI), writes the
    CLI's columns there as CSV, JSON Lines or Parquet (``format``, else from the name) and
    returns ``(classified, out_of_scope, failed)`` (``result.Status``'s order). Options as
    ``build_dataset``; ``address`` as ``connect``.
    An empty input or a source that does not exist is a UsageError before any work starts.
    """
    inputs = collect_inputs(sources, recursive).files
    if not inputs:
        raise UsageError("no inputs: the sources hold no images or DICOM files")
    results = iter_results(inputs, address=address, **options)
    if output is None:
        return list(results)
    fmt = format or format_for(output)
    names = load_model(options.get("model"), providers=["CPUExecutionProvider"])[1].class_names
    counts = dict.fromkeys(Status, 0)
    out = Output(output, fmt, names)
    try:
        for r in results:
            out.write(r)
            counts[r.status] += 1
    finally:
        out.close()
    return tuple(counts.values())


__all__ = ["ClassifyBatch", "build_dataset", "classify_dataset", "connect", "iter_results",
           "plan"]
