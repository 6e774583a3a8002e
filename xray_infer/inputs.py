"""What a run's inputs are: files and folders on this machine, or URIs that pyarrow's
filesystems read (``s3://``, ``gs://``, ``file://`` ...), expanded into one ordered list.

Both engines (in-process and Ray) start from this list, so they score the same inputs under
the same names.
"""
import os
from pathlib import Path

from .errors import UsageError

#: Names that say a file is DICOM (it may also say so by its ``DICM`` marker alone).
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: File extensions collected when scanning folders (matched case-insensitively).
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", *DICOM_EXTENSIONS)


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


def _expand_local(p, recursive):
    if os.path.isdir(p):
        walker = Path(p).rglob("*") if recursive else Path(p).iterdir()
        return sorted(str(f) for f in walker if _has_image_extension(f.name))
    if os.path.lexists(p):
        return [p]
    raise UsageError(f"{p}: no such file or directory")


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


def dicom_files(sources, recursive=False):
    """Files in the folders among ``sources`` that have no image extension but start as DICOM
    files do (128 bytes, then ``DICM``): archives often name instances by their UID alone."""
    found = []
    for source in map(os.fspath, sources):
        if is_uri(source) or not os.path.isdir(source):
            continue
        walker = Path(source).rglob("*") if recursive else Path(source).iterdir()
        for f in sorted(walker):
            if _has_image_extension(f.name) or not f.is_file():
                continue
            try:
                with open(f, "rb") as fh:
                    if fh.read(132)[128:] == b"DICM":
                        found.append(str(f))
            except OSError:
                pass
    return found


def collect_inputs(sources, recursive=False):
    """Expand files, folders and URIs into a list of inputs (folders: sorted, by extension).

    A path named explicitly is always included, whatever its extension, so that a bad file
    given by name gets an error row instead of vanishing; so is anything in a folder whose name
    has an image extension, a folder named ``x.jpeg`` included (it gets an error row). An input
    reached twice (named twice, or named and inside a named folder) is kept once.
    Returns (inputs, number of repeats dropped). Raises UsageError for a source that does not
    exist or cannot be listed.
    """
    files, seen, repeats = [], set(), 0
    for source in sources:
        source = os.fspath(source)
        found = _expand_uri(source, recursive) if is_uri(source) else \
            _expand_local(source, recursive)
        for f in found:
            key = input_key(f)
            if key in seen:
                repeats += 1
                continue
            seen.add(key)
            files.append(f)
    return files, repeats
