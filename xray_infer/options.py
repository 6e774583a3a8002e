"""How inputs are scored: every option of ``Classifier`` and its default, in one record. The
one-shot ``classify``, the Ray engine, the node and the command line build a ScoringOptions
and hand it on, rather than restating the options and their defaults. It imports nothing of
the package: ``Classifier.from_options`` builds the classifier."""
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ScoringOptions:
    """Fields as ``Classifier``'s parameters (its docstring says what each does)."""
    model: "str | None" = None          # an exported ONNX model; None: the bundled one
    providers: "tuple | None" = None    # ONNX Runtime providers; None: the best available
    batch_size: "int | None" = None     # None: spec.CPU_BATCH_SIZE on the CPU, else
    #                                     spec.DEFAULT_BATCH_SIZE (one batch-size rule)
    threads: "int | None" = None        # ONNX Runtime intra-op threads a call; None: 1 on a CPU
    workers: "int | None" = None        # worker threads; None: one per CPU
    heatmaps: bool = False
    precision: str = "auto"             # auto, or one of spec.PRECISIONS
    scope: "bool | str" = True          # True / "on", False / "off"
    ages: "tuple[int, int] | None" = None  # accepted patient ages; None: the model's range
    decode: str = "reduced"             # one of spec.DECODE_MODES
    max_value: "int | None" = None      # the maximum of 16-bit inputs that declare none

    def changed(self, **changes):
        """These options as keyword arguments, ``changes`` applied
        (``Classifier.from_options`` builds one from them)."""
        return asdict(replace(self, **changes))

