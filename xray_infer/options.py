"""How inputs are scored: every option of ``Classifier`` and its default, in one record. The
one-shot ``classify``, the Ray engine, the node and the command line build a ScoringOptions
and hand it on, rather than restating the options and their defaults."""
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ScoringOptions:
    """Fields as ``Classifier``'s parameters (its docstring says what each does)."""
    model: str = None          # an exported ONNX model; None: the bundled one
    providers: tuple = None    # ONNX Runtime providers; None: the best available
    batch_size: int = None     # None: spec.CPU_BATCH_SIZE on the CPU, DEFAULT_BATCH_SIZE on a GPU
    threads: int = None        # ONNX Runtime intra-op threads per call; None: 1 on the CPU
    workers: int = None        # worker threads; None: one per CPU
    heatmaps: bool = False
    precision: str = "auto"    # auto, or one of spec.PRECISIONS
    scope: object = True       # True / "on", False / "off"
    ages: tuple = None         # accepted patient ages; None: the model's range
    decode: str = "reduced"    # one of spec.DECODE_MODES
    max_value: int = None      # the maximum of 16-bit inputs that declare none

    def classifier(self, **changes):
        """A Classifier with these options, ``changes`` applied."""
        from .classifier import Classifier
        return Classifier(**asdict(replace(self, **changes)))

    def scope_label(self):
        from .scope import Scope
        return Scope.of(self.scope, self.ages).label()

