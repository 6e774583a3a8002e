"""One ``classify`` run, made once from its checked arguments (``Run.of``): what scores, where
its inputs come from and its rows go, and which side outputs it writes. The engine, the scoring
loop, the results page and the summary read this record, never the argparse Namespace."""
from dataclasses import dataclass
from typing import Optional

from ..options import ScoringOptions
from .engine import scoring_options


@dataclass(frozen=True)
class Run:
    options: ScoringOptions
    #: rows: a file or URI (None: standard output), in ``format``
    output: Optional[str]
    format: str
    #: DICOMweb inputs and outputs (``dicomweb_options.Remote``), or None
    remote: object
    #: side outputs: overlay PNGs (and their longest side), DICOM SR + SC, the results page
    heatmaps: Optional[str]
    heatmap_size: int
    dicom_out: Optional[str]
    report: Optional[str]
    log: Optional[str]
    #: "local", or "ray" with the cluster's address and the workers' shares
    engine: str
    address: Optional[str]
    gpus_per_worker: Optional[float]
    cpus_per_worker: Optional[float]

    @classmethod
    def of(cls, args, fmt, remote, providers):
        return cls(options=scoring_options(args, providers), output=args.output, format=fmt,
                   remote=remote, heatmaps=args.heatmaps, heatmap_size=args.heatmap_size,
                   dicom_out=args.dicom_out, report=args.report, log=args.log,
                   engine=args.engine, address=args.address,
                   gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker)
