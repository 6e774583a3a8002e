"""One input's outcome (``Result``), its ``Status``, and the one definition of the row every
writer (CSV, JSON Lines, Parquet), both engines and the results page use: path, label, one
probability per class, error (the reason there is no label: a failure, or why the input is
out of scope), status and scope (the gate's setting the input was scored under).

Out of scope is not a failure: the input was read and the model declined it, as it should
(the exit status, the summary and ``classify_dataset``'s counts all say so).
"""
from dataclasses import dataclass, field
from typing import Dict, Optional
from enum import Enum

import numpy as np


class Status(str, Enum):
    """What became of an input; compares equal to its text (``"failed"``)."""
    CLASSIFIED = "classified"
    OUT_OF_SCOPE = "out_of_scope"
    FAILED = "failed"

    def __str__(self):
        return self.value


@dataclass(frozen=True)
class Result:
    """The outcome for one input: a prediction, or the reason there is none.

    ``source`` is the path as given (or ``<array i>`` / ``<bytes i>`` for in-memory input i).
    ``status`` is ``"classified"`` (``label`` and ``probabilities`` set: every class name to its
    probability), ``"out_of_scope"`` (the model was not made for this input: ``refusal`` says
    why, ``refused_by`` names the gate, a DICOM attribute or ``"image"``) or ``"failed"``
    (``error`` says why). ``heatmap`` (only when asked for) is the predicted class's activation
    map, float32 in [0, 1], at the scan's own size. ``scope`` records the gate's setting
    (``"on"``, ``"off"``, or the widened ages) under which the input was scored.
    """
    source: str
    label: Optional[str] = None
    probabilities: Optional[Dict[str, float]] = None
    error: Optional[str] = None
    heatmap: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    refusal: Optional[str] = None
    refused_by: Optional[str] = None
    scope: str = "on"

    @property
    def ok(self):
        """Classified: a label with probabilities."""
        return self.error is None and self.refusal is None

    @property
    def status(self):
        return Status.FAILED if self.error is not None else \
            Status.OUT_OF_SCOPE if self.refusal is not None else Status.CLASSIFIED

    @property
    def reason(self):
        """Why there is no label (the error or the refusal); None when classified."""
        return self.error if self.error is not None else self.refusal

    def to_dict(self):
        return {"path": self.source, "label": self.label, "probabilities": self.probabilities,
                "status": self.status.value, "error": self.reason, "scope": self.scope}


def header(class_names):
    return ["path", "label"] + [f"p_{n}" for n in class_names] + ["error", "status", "scope"]


def columns(results, class_names):
    """{column: values} of ``results`` (None where a row has no value)."""
    out = {"path": [r.source for r in results], "label": [r.label for r in results]}
    for n in class_names:
        out[f"p_{n}"] = [r.probabilities[n] if r.ok else None for r in results]
    out["error"] = [r.reason for r in results]
    out["status"] = [r.status.value for r in results]
    out["scope"] = [r.scope for r in results]
    return out


def arrow_schema(class_names):
    import pyarrow as pa
    return pa.schema([("path", pa.string()), ("label", pa.string())] +
                     [(f"p_{n}", pa.float64()) for n in class_names] +
                     [("error", pa.string()), ("status", pa.string()), ("scope", pa.string())])


def result_from_row(row):
    """The Result a row (a mapping of the columns above) records."""
    common = {"scope": row["scope"]}
    if row["status"] == Status.FAILED:
        return Result(row["path"], error=row["error"], **common)
    if row["status"] == Status.OUT_OF_SCOPE:
        return Result(row["path"], refusal=row["error"], **common)
    probs = {k[2:]: v for k, v in row.items() if k.startswith("p_")}
    return Result(row["path"], label=row["label"], probabilities=probs, **common)
