"""Where ``classify`` scores: a Classifier in this process, or Ray workers, with the scoring
options the command line gave, gathered once."""
from dataclasses import asdict
from functools import partial

from ..options import ScoringOptions
from ..scope import Scope, require_gate
from . import dicomweb_options


def scoring_options(args, providers):
    """The ScoringOptions of a ``classify`` command line."""
    return ScoringOptions(model=args.model, providers=providers, batch_size=args.batch_size,
                          threads=args.threads, workers=args.workers,
                          heatmaps=bool(args.heatmaps or args.dicom_out), precision=args.precision,
                          scope=args.scope, ages=args.ages, decode=args.decode,
                          max_value=args.max_value)


class Engine:
    """Where the scoring runs: a Classifier in this process, or Ray workers (``--engine ray``:
    connected here, so that an unreachable cluster is reported before any output is touched).
    Both yield one Result per input, in input order."""

    def __init__(self, run):
        self.run, self.options = run, run.options
        o = run.options
        if run.engine == "ray":
            from .. import distributed
            from ..model import DEFAULT_MODEL, Variant, load_model
            self.clf = None
            self.spec = load_model(o.model, providers=["CPUExecutionProvider"])[1]
            self.variant = Variant(o.model or DEFAULT_MODEL, o.precision,
                                   "chosen by each Ray worker")
            require_gate(self.spec, Scope.of(o.scope, o.ages), o.model or DEFAULT_MODEL)
            from ..ray_terminal import quiet_ray
            quiet_ray()
            distributed.connect(run.address)
            distributed.plan(o.workers, run.gpus_per_worker or 0.0, run.cpus_per_worker)
        else:
            from ..classifier import Classifier  # onnxruntime: once a run goes ahead
            self.clf = Classifier.from_options(self.options)
            self.spec, self.variant = self.clf.spec, self.clf.variant

    def results(self, files):
        if self.clf is not None:
            if self.run.remote is not None:  # DICOMweb instances: each read in its turn
                from ..batch import Fetched
                fetched = (Fetched(f, partial(self.run.remote.fetch, f))
                           if dicomweb_options.is_dicomweb(f) else f for f in files)
                files = list(fetched) if isinstance(files, list) else fetched
            return self.clf.iter_classify(files)
        from .. import distributed
        run = self.run
        # on Ray, --workers is the number of actors; each scores on its CPUs' threads
        scoring = {k: v for k, v in asdict(self.options).items()
                   if k not in ("workers", "threads", "heatmaps")}
        return distributed.iter_results(
            files, address=run.address, workers=self.options.workers,
            gpus_per_worker=run.gpus_per_worker or 0.0, cpus_per_worker=run.cpus_per_worker,
            **scoring)
