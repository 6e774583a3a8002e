"""One input's outcome (``Result``), its ``Status``, and the one definition of the row every
writer (CSV, JSON Lines, Parquet), both engines and the results page use: path, label, one
probability per class, error (the reason there is no label: a failure, or why the input is
out of scope), status and scope (the gate's setting the input was scored under).

Out of scope is not a failure: the input was read and the model declined it, as it should
(the exit status, the summary and ``classify_dataset``'s counts all say so).
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional
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

    ``status`` is ``"classified"`` (``label`` and ``probabilities`` set), ``"out_of_scope"``
    (``refusal`` and ``refused_by`` set) or ``"failed"`` (``error`` set).

    Attributes
    ----------
    source : str
        The path as given (``<array i>`` / ``<bytes i>`` for in-memory input i).
    label : str or None
        The predicted class, when classified.
    probabilities : dict of str to float, or None
        Every class name to its probability, when classified.
    error : str or None
        Why the input failed.
    heatmap : numpy.ndarray or None
        Only when asked for: the predicted class's activation map, float32 in [0, 1], at the
        scan's own size.
    refusal : str or None
        Why the model was not made for this input.
    refused_by : str or None
        The gate that refused it: a DICOM attribute, ``"image"`` or ``"adult_head"``.
    scope : str
        The gate's setting under which the input was scored: ``"on"``, ``"off"``, or the
        widened ages.
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


@dataclass(frozen=True)
class Column:
    """One column of the result rows: its ``name``, its Arrow type, and how a Result gives its
    value (None where the row has none). CSV, JSON Lines' flat rows, Parquet and reading an
    earlier output back are derived from ``row_columns``, the one place the columns are
    spelled."""
    name: str
    arrow: str  # the pyarrow type's name: "string" or "float64"
    value: Callable[["Result"], object]


def _probability(name):
    return lambda r: r.probabilities[name] if r.ok else None


def row_columns(class_names) -> "list[Column]":
    """The columns of a row, in order: path, label, one probability a class, error, status,
    scope."""
    return [Column("path", "string", lambda r: r.source),
            Column("label", "string", lambda r: r.label),
            *[Column(f"p_{n}", "float64", _probability(n)) for n in class_names],
            Column("error", "string", lambda r: r.reason),
            Column("status", "string", lambda r: r.status.value),
            Column("scope", "string", lambda r: r.scope)]


#: The columns every output starts with, whatever the classes: how an earlier output is
#: recognised as this program's (``output.Existing``).
LEADING = ("path", "label")


def header(class_names):
    return [c.name for c in row_columns(class_names)]


def columns(results, class_names):
    """{column: values} of ``results`` (None where a row has no value)."""
    return {c.name: [c.value(r) for r in results] for c in row_columns(class_names)}


def arrow_schema(class_names):
    import pyarrow as pa
    return pa.schema([(c.name, getattr(pa, c.arrow)()) for c in row_columns(class_names)])


def result_from_row(row):
    """The Result a row (a mapping of the columns above) records."""
    common = {"scope": row["scope"]}
    if row["status"] == Status.FAILED:
        return Result(row["path"], error=row["error"], **common)
    if row["status"] == Status.OUT_OF_SCOPE:
        return Result(row["path"], refusal=row["error"], **common)
    probs = {k[2:]: v for k, v in row.items() if k.startswith("p_")}
    return Result(row["path"], label=row["label"], probabilities=probs, **common)
