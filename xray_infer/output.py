"""Result rows as CSV, JSON Lines or Parquet: the same columns whichever engine scored them
(path, label, one probability per class, error)."""
import csv
import io
import json
import os

FORMATS = ("csv", "jsonl", "parquet")
#: Parquet rows are written in groups of this many (a crash loses at most the open group).
PARQUET_ROW_GROUP = 10_000


def header(class_names):
    return ["path", "label"] + [f"p_{n}" for n in class_names] + ["error"]


def format_for(output):
    """The format an output name implies: jsonl for .jsonl/.json/.ndjson, parquet for .parquet
    or .pq, else csv."""
    suffix = os.path.splitext(os.fspath(output))[1].lower() if output else ""
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "parquet" if suffix in (".parquet", ".pq") else "csv"


def open_output(output, fmt, append=False):
    """The stream a ResultWriter writes to: text for CSV and JSON Lines, binary for Parquet;
    ``output`` a local path or a URI that pyarrow writes (``s3://``, ``gs://``, ``file://``;
    object stores cannot append)."""
    if "://" in os.fspath(output):
        import pyarrow.fs as pafs
        fs, path = pafs.FileSystem.from_uri(os.fspath(output))
        raw = fs.open_output_stream(path)
        return raw if fmt == "parquet" else io.TextIOWrapper(raw, encoding="utf-8", newline="")
    if fmt == "parquet":
        return open(output, "wb")
    return open(output, "a" if append else "w", encoding="utf-8", newline="")


def output_exists(output):
    """Whether ``output`` (a path or URI) is already there."""
    if "://" not in os.fspath(output):
        return os.path.exists(output)
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(os.fspath(output))
    return fs.get_file_info(path).type != pafs.FileType.NotFound


class ResultWriter:
    """Writes Results in order. CSV and JSON Lines go to an open text ``stream``, flushed after
    each row so that a crash loses nothing; Parquet goes to ``stream``, a path or URI, in row
    groups, and is complete only after ``close``."""

    def __init__(self, stream, fmt, class_names, write_header=True):
        # stream: from open_output (text for CSV and JSON Lines, binary for Parquet)
        self.stream, self.fmt, self.names = stream, fmt, list(class_names)
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            if write_header:
                self.csv.writerow(header(class_names))
                stream.flush()
        elif fmt == "parquet":
            self._parquet_open(stream)

    def write(self, r):
        if self.fmt == "csv":
            probs = ([f"{r.probabilities[n]:.6f}" for n in self.names] if r.ok
                     else [""] * len(self.names))
            self.csv.writerow([r.source, r.label or ""] + probs + [r.error or ""])
        elif self.fmt == "jsonl":
            self.stream.write(json.dumps(r.to_dict()) + "\n")
        else:
            self._rows.append(r)
            if len(self._rows) >= PARQUET_ROW_GROUP:
                self._parquet_flush()
            return
        self.stream.flush()

    def close(self):
        if self.fmt == "parquet":
            self._parquet_flush()
            self._writer.close()

    # -- Parquet ---------------------------------------------------------------------------------
    def _parquet_open(self, stream):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self._pa = pa
        self.schema = pa.schema([("path", pa.string()), ("label", pa.string())] +
                                [(f"p_{n}", pa.float64()) for n in self.names] +
                                [("error", pa.string())])
        self._writer = pq.ParquetWriter(stream, self.schema)
        self._rows = []

    def _parquet_flush(self):
        if not self._rows:
            return
        rows = self._rows
        columns = {"path": [r.source for r in rows], "label": [r.label for r in rows]}
        for n in self.names:
            columns[f"p_{n}"] = [r.probabilities[n] if r.ok else None for r in rows]
        columns["error"] = [r.error for r in rows]
        self._writer.write_table(self._pa.table(columns, schema=self.schema))
        self._rows = []
