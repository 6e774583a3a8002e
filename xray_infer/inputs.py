"""What a run's inputs are: files and folders on this machine, or URIs that pyarrow's
filesystems read (``s3://``, ``gs://``, ``file://`` ...), expanded into one ordered list.

Both engines (in-process and Ray) start from this list, so they score the same inputs under
the same names. A DICOMweb listing may instead be streamed: listed a page at a time as its
instances are scored.
"""
import itertools
import os
from dataclasses import dataclass, field
from typing import Iterable

from .dicomweb import is_dicomweb
from .errors import UsageError
from .formats import HEAD_BYTES, IMAGE_EXTENSIONS, recognise



def is_uri(source):
    return "://" in os.fspath(source)


def input_key(path):
    """What identifies an input across runs: its absolute, normalised path (``./scans/x`` and
    ``scans/x`` are one input; symbolic links are not followed, so two links are two inputs).
    A URI is its own key."""
    path = os.fspath(path)
    return path if is_uri(path) else os.path.abspath(path)


def _has_image_extension(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass
class Inputs:
    """A run's inputs: ``files`` in order, how many ``repeats`` were dropped, the folder
    entries ``skipped`` as ``(path, reason)``, and how many ``subfolders`` were not descended
    into (without ``recursive``). ``streamed``: ``files`` is an iterator that lists DICOMweb
    instances as it goes (``repeats`` and ``skipped`` grow with it)."""
    files: Iterable = field(default_factory=list)
    repeats: int = 0
    skipped: list = field(default_factory=list)
    subfolders: int = 0
    streamed: bool = False


def peek(iterable):
    """(whether ``iterable`` holds anything, an iterable of all of it)."""
    it = iter(iterable)
    first = next(it, None)
    return first is not None, ([] if first is None else itertools.chain([first], it))


def _head(path):
    """A file's first bytes (``formats.HEAD_BYTES``), or None where it cannot be read; opened
    without blocking, so a named pipe cannot hang the listing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, HEAD_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)


def _walk(folder, recursive, found):
    """Fill ``found`` (an Inputs) with the images and DICOM files of ``folder``, by name or,
    for files without an image extension, by content."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        found.skipped.append((folder, f"folder cannot be listed: {e.strerror or e}"))
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir()
            is_link = entry.is_symlink()
        except OSError:
            is_dir = is_link = False
        if is_dir and _has_image_extension(entry.name):
            found.files.append(entry.path)  # a folder named like an image: an error row
        if is_dir:
            if not recursive:
                found.subfolders += 1
            elif is_link:
                found.skipped.append((entry.path, "a symbolic link to a folder: not followed "
                                                  "(name it on the command line to score it)"))
            else:
                _walk(entry.path, recursive, found)
        elif _has_image_extension(entry.name):
            found.files.append(entry.path)  # by name: one that is no image gets an error row
        elif not entry.is_file():
            found.skipped.append((entry.path, "not a regular file"))
        elif recognise(_head(entry.path) or b""):
            found.files.append(entry.path)
        else:
            found.skipped.append((entry.path, "not an image or DICOM file (by its content)"))


def _expand_uri(uri, recursive):
    import pyarrow.fs as pafs  # only URIs need pyarrow
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
            paths = sorted(f.path for f in found if f.type == pafs.FileType.File
                           and _has_image_extension(f.base_name))
        elif info.type == pafs.FileType.NotFound:
            raise UsageError(f"{uri}: no such file or directory")
        else:
            paths = [path]
    except (OSError, ValueError) as e:  # unknown scheme, no credentials, unreachable store
        raise UsageError(f"{uri}: cannot list: {e}") from None
    scheme = uri.split("://", 1)[0]
    return [f"{scheme}://{p}" for p in paths]


def collect_inputs(sources, recursive=False, remote=None, stream=False):
    """Expand files, folders and URIs into the run's ``Inputs``.

    A path named explicitly is always included, whatever it holds, so that a bad file given by
    name gets an error row instead of vanishing. A folder contributes, sorted, its files with an
    image extension (a folder named ``x.jpeg`` too: it gets an error row) and its other files
    whose leading bytes are an image's or DICOM's (archives name instances by UID alone);
    everything else in it is skipped and listed with the reason. ``remote(url, skipped)``
    lists a DICOMweb study, series or query as instance URLs (``xray_infer.dicomweb``). An
    input reached twice (named twice, or named and inside a named folder) is kept once.
    Raises UsageError for a source that does not exist or cannot be listed. With ``stream``,
    a DICOMweb listing is not listed up front: ``files`` is an iterator, each listing's first
    page read here and the rest as the run takes them (a listing that fails on a later page
    raises UsageError from the iterator).
    """
    out, parts = Inputs(), []
    for source in sources:
        source = os.fspath(source)
        if is_dicomweb(source):
            if remote is None:
                raise UsageError(f"{source}: a DICOMweb URL is read by xray-infer classify "
                                 f"with the local engine")
            found = remote(source, out.skipped)
            if stream:  # its first item taken now: a server that cannot list says so first
                found, out.streamed = peek(found)[1], True
        elif is_uri(source):
            found = _expand_uri(source, recursive)
        elif os.path.isdir(source):
            walked = Inputs()
            _walk(source, recursive, walked)
            found = sorted(walked.files)
            out.skipped += walked.skipped
            out.subfolders += walked.subfolders
        elif os.path.lexists(source):
            found = [source]
        else:
            raise UsageError(f"{source}: no such file or directory")
        parts.append(found)
    out.files = _unique(parts, out)
    if not out.streamed:
        out.files = list(out.files)
    return out


def _unique(parts, out):
    """The inputs of ``parts`` in order, each once (``out.repeats`` counts the rest)."""
    seen = set()
    for found in parts:
        for f in found:
            key = input_key(f)
            if key in seen:
                out.repeats += 1
                continue
            seen.add(key)
            yield f
