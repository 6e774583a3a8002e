"""Result rows as CSV, JSON Lines or Parquet: the same columns whichever engine scored them
(the columns themselves are defined in ``result``)."""
import csv
import io
import json
import os
from pathlib import Path

from .errors import UsageError
from .inputs import input_key, is_uri
from .result import LEADING, Status, arrow_schema, columns, header

FORMATS = ("csv", "jsonl", "parquet")
#: A CSV cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV
#: injection"): it is written behind an apostrophe, which ``csv_value`` takes off again. A cell
#: that starts with an apostrophe gets one too, so that every text reads back as written.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
#: Paths are text decoded with surrogateescape (a file name that is not UTF-8 keeps its bytes):
#: CSV and JSON Lines write those bytes back as they were.
TEXT_ERRORS = "surrogateescape"


def csv_cell(text):
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_value(cell):
    """The text a cell written by ``csv_cell`` holds."""
    return cell[1:] if cell.startswith("'") else cell
#: Parquet rows are written in groups of this many (a crash loses at most the open group).
PARQUET_ROW_GROUP = 10_000


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
    if is_uri(output):
        import pyarrow.fs as pafs
        fs, path = pafs.FileSystem.from_uri(os.fspath(output))
        raw = fs.open_output_stream(path)
        return raw if fmt == "parquet" else io.TextIOWrapper(raw, encoding="utf-8", newline="",
                                                             errors=TEXT_ERRORS)
    if fmt == "parquet":
        return open(output, "wb")
    return open(output, "a" if append else "w", encoding="utf-8", newline="", errors=TEXT_ERRORS)


def output_exists(output):
    """Whether ``output`` (a path or URI) is already there; UsageError for a URI that no
    filesystem of pyarrow's writes (``http://`` ...) or one that cannot be reached."""
    if not is_uri(output):
        return os.path.exists(output)
    import pyarrow.fs as pafs
    try:
        fs, path = pafs.FileSystem.from_uri(os.fspath(output))
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except (OSError, ValueError) as e:  # an unknown scheme, no credentials, unreachable
        raise UsageError(f"--output {output}: cannot write there: {e}") from None


class ResultWriter:
    """Writes Results in order. CSV and JSON Lines go to an open text ``stream``, flushed after
    each row so that a crash loses nothing; Parquet goes to ``stream``, a path or URI, in row
    groups, and is complete only after ``close``."""

    def __init__(self, stream, fmt, class_names, write_header=True, earlier=None):
        # stream: from open_output (text for CSV and JSON Lines, binary for Parquet);
        # earlier: for Parquet, a table of rows kept from an earlier run, written first
        self.stream, self.fmt, self.names = stream, fmt, list(class_names)
        self.written, self.last = 0, None  # rows of this run, and the last one's Result
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            if write_header:
                self.csv.writerow(header(class_names))
                stream.flush()
        elif fmt == "parquet":
            self._parquet_open(stream, earlier)

    def write(self, r):
        self.written, self.last = self.written + 1, r
        if self.fmt == "csv":
            probs = ([f"{r.probabilities[n]:.6f}" for n in self.names] if r.ok
                     else [""] * len(self.names))
            self.csv.writerow([csv_cell(r.source), r.label or ""] + probs +
                              [csv_cell(r.reason or ""), r.status, r.scope])
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
    def _parquet_open(self, stream, earlier):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self._pa = pa
        self.schema = arrow_schema(self.names)
        self._writer = pq.ParquetWriter(stream, self.schema)
        self._rows = []
        if earlier is not None:
            self._writer.write_table(earlier.cast(self.schema))

    def _parquet_flush(self):
        if not self._rows:
            return
        table = columns(self._rows, self.names)
        # Parquet strings must be UTF-8: a name that is not keeps its bytes as \xNN escapes.
        table["path"] = [os.fsencode(p).decode("utf-8", "backslashreplace") for p in table["path"]]
        self._writer.write_table(self._pa.table(table, schema=self.schema))
        self._rows = []


def _is_parquet(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


class Existing:
    """An earlier output file, read for ``--resume`` without changing it.

    ``fmt`` and ``columns`` come from the file itself; ``complete`` is the text up to its last
    newline (a row cut by an interruption is dropped); ``rows`` maps each input's key to
    whether its row holds an error; ``paths`` are the rows' paths as written. A Parquet file
    (written whole, by row groups) is read as a ``table``: resuming writes it again, with the
    new rows after its own.
    """

    def __init__(self, path):
        self.path, self.paths, self.table = path, [], None
        if _is_parquet(path):
            self._read_parquet(path)
            return
        try:
            text = Path(path).read_text(encoding="utf-8", errors=TEXT_ERRORS)
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: cannot read the results file to resume: {e}") from None
        cut = text.rfind("\n") + 1
        self.complete, self.partial = text[:cut], text[cut:]
        lines = self.complete.splitlines()
        self.fmt, self.columns, self.rows = None, None, {}
        if not lines:
            return
        if lines[0].startswith("{"):
            self.fmt = "jsonl"
            for n, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                    self.rows[input_key(row["path"])] = row["status"] == Status.FAILED
                    self.paths.append(row["path"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UsageError(f"{path}, line {n}: not a row this program wrote; "
                                     f"refusing to append to it") from None
        else:
            self.fmt = "csv"
            reader = csv.reader(io.StringIO(self.complete))
            self.columns = next(reader)
            if tuple(self.columns[:2]) != LEADING or "error" not in self.columns:
                raise UsageError(f"{path}: first line is neither a CSV header of this program "
                                 f"nor a JSON row; refusing to append to it")
            # Files of earlier versions have no status column (they are refused below, by
            # their columns): read them far enough to say so.
            status = self.columns.index("status" if "status" in self.columns else "error")
            for n, row in enumerate(reader, 2):
                if len(row) != len(self.columns):
                    raise UsageError(f"{path}, line {n}: {len(row)} fields where the header has "
                                     f"{len(self.columns)}; refusing to append to it")
                self.rows[input_key(csv_value(row[0]))] = row[status] not in (
                    Status.CLASSIFIED, Status.OUT_OF_SCOPE, "")
                self.paths.append(csv_value(row[0]))

    def _read_parquet(self, path):
        import pyarrow.parquet as pq
        try:
            self.table = pq.read_table(path)
        except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
            raise UsageError(f"{path}: cannot read the Parquet file to resume: {e}") from None
        self.fmt, self.complete, self.partial = "parquet", "", ""
        self.columns = self.table.column_names
        if tuple(self.columns[:2]) != LEADING or "status" not in self.columns:
            raise UsageError(f"{path}: not a results file of this program; refusing to resume")
        self.paths = self.table.column("path").to_pylist()
        statuses = self.table.column("status").to_pylist()
        self.rows = {input_key(p): s == Status.FAILED for p, s in zip(self.paths, statuses)}

    def kept_table(self, keys):
        """The Parquet rows with the rows of ``keys`` left out."""
        import pyarrow as pa
        keep = [input_key(p) not in keys for p in self.paths]
        return self.table.filter(pa.array(keep, pa.bool_()))

    def without(self, keys):
        """The complete text with the rows of ``keys`` left out."""
        if not keys:
            return self.complete
        lines = self.complete.splitlines(keepends=True)
        if self.fmt == "jsonl":
            return "".join(ln for ln in lines if input_key(json.loads(ln)["path"]) not in keys)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        reader = csv.reader(io.StringIO(self.complete))
        writer.writerow(next(reader))
        for row in reader:
            if input_key(csv_value(row[0])) not in keys:
                writer.writerow(row)
        return out.getvalue()


class Output:
    """Where a run's rows go, owning the output's life from open to close: a new file (or one
    ``--overwrite`` replaces), a resumed one (appended to; rewritten first without a row cut by
    an interruption and the failed rows about to be retried; Parquet written whole into a
    temporary file that replaces it at close, interrupted or not), or ``stdout``.

    Raises UsageError, before anything is touched, when a resumed CSV's columns are not the
    ones this model writes."""

    def __init__(self, path, fmt, class_names, existing=None, retried=(), stdout=None):
        self.path, self.stdout = path, stdout
        appending = existing is not None and existing.fmt is not None
        if appending and fmt == "csv" and existing.columns != header(class_names):
            raise UsageError(
                f"{path} has columns {','.join(existing.columns)}; this model writes "
                f"{','.join(header(class_names))}. Resume with the model that wrote it, or "
                f"write a new file")
        earlier, self.target = None, path
        if appending and fmt == "parquet":
            earlier = existing.kept_table(retried)
            self.target = f"{path}.tmp{os.getpid()}"
        elif appending and (existing.partial or retried):
            tmp = f"{path}.tmp{os.getpid()}"  # replaced in one step
            with open(tmp, "w", encoding="utf-8", newline="", errors=TEXT_ERRORS) as f:
                f.write(existing.without(retried))
            os.replace(tmp, path)
        if path:
            self.stream = open_output(self.target, fmt, append=appending and fmt != "parquet")
        else:
            stdout.reconfigure(errors=TEXT_ERRORS)  # file names that are not UTF-8, as they are
            self.stream = stdout
        self.writer = ResultWriter(self.stream, fmt, class_names, write_header=not appending,
                                   earlier=earlier)

    def write(self, r):
        self.writer.write(r)

    @property
    def written(self):
        return self.writer.written

    @property
    def last(self):
        return self.writer.last

    def close(self):
        try:
            self.writer.close()
            if self.stream is not self.stdout:
                self.stream.close()
        except BrokenPipeError:
            pass  # the reader went away: reported where it was raised
        if self.target != self.path:
            os.replace(self.target, self.path)
