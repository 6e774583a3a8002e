"""What ``classify`` writes beside the rows for each classified input: overlay PNGs
(``--heatmaps``) and DICOM SR + Secondary Capture (``--dicom-out``)."""
import io
import logging
import os
from pathlib import Path

from ..formats import IMAGE_EXTENSIONS
from ..inputs import input_key, is_uri

log = logging.getLogger("xray_infer.cli")


def output_stem(source):
    """The name outputs take after an input: its file name without an image or DICOM
    extension; any other dot is kept, so a file or a DICOMweb instance named by its UID keeps
    the whole UID."""
    name = source.rstrip("/").rsplit("/", 1)[-1] if is_uri(source) else Path(source).name
    base, ext = os.path.splitext(name)
    return base if ext.lower() in IMAGE_EXTENSIONS else name


class SideOutput:
    """What a writer of side outputs counts: ``written``, and ``problems`` as ``(input,
    reason)`` for the inputs whose output is missing (the summary lists them)."""

    def __init__(self):
        self.names, self.written, self.problems = Names(), 0, []

    @property
    def failed(self):
        return len(self.problems)

    def missed(self, source, what, reason):
        self.problems.append((source, f"{what} not written: {reason}"))
        log.warning("%s: %s not written: %s", source, what, reason)


class Names:
    """Output names after inputs (``scan``); a name met twice in one run gets a suffix from the
    input's path, so nothing is overwritten."""

    def __init__(self):
        self.used = set()

    def __call__(self, source):
        import hashlib
        name = output_stem(source)
        if name in self.used:  # the key's bytes: a name that is not UTF-8 has no other
            name += "-" + hashlib.sha1(os.fsencode(input_key(source))).hexdigest()[:8]
        self.used.add(name)
        return name


class Overlays(SideOutput):
    """One overlay PNG per classified input: the scan, its heatmap, label and probabilities."""

    def __init__(self, folder, long_side=None):
        super().__init__()
        self.long_side = long_side  # None: heatmap.OVERLAY_LONG_SIDE; 0: full size
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths = {}  # input -> its overlay, for the results page

    def write(self, r, scan, data=None):
        """``data``: the input's bytes where it is not a local file (unused: the overlay is
        drawn from ``scan``)."""
        import cv2

        from ..heatmap import OVERLAY_LONG_SIDE, caption, overlay
        try:
            path = self.folder / f"{self.names(r.source)}.png"
            side = OVERLAY_LONG_SIDE if self.long_side is None else self.long_side
            ok, png = cv2.imencode(".png", overlay(scan.pixels, scan.maxval, r.heatmap,
                                                   caption(r), long_side=side))
            if not ok:
                raise OSError("OpenCV could not encode the PNG")
            # Python writes the file, whatever bytes its name holds (OpenCV takes UTF-8 text)
            path.write_bytes(png.tobytes())
            self.written += 1
            self.paths[r.source] = path
        except Exception as e:  # the row is written; a missing picture is reported, not fatal
            self.missed(r.source, "heatmap", e)


class DicomResults(SideOutput):
    """For each classified DICOM input, a Structured Report and a Secondary Capture of its
    heatmap: files ``name.SR.dcm``, ``name.SC.dcm`` in a folder, or stored by STOW-RS at a
    DICOMweb URL (both in one request, tried up to three times; once, without waiting, while
    the server took nothing for the input before); other inputs are counted, not converted."""

    def __init__(self, target, clf, remote=None, audit=None):
        super().__init__()
        self.audit, self.target = audit, target  # STOW-RS deliveries are audited
        from ..dicomweb import is_dicomweb
        from ..model import model_digest
        self.client = self.folder = None
        if is_dicomweb(target):
            self.client = remote.client(target)
        else:
            self.folder = Path(target)
            self.folder.mkdir(parents=True, exist_ok=True)
        # the variant that scores (int8, float16 or the model itself) is the one named
        self.spec, self.digest = clf.spec, model_digest(clf.variant.path)
        self.not_dicom = 0
        self.server_down = False  # the DICOMweb server took nothing for the last input

    def write(self, r, scan, data=None):
        """``data``: the input's bytes where it is not a local file (a DICOMweb instance)."""
        import pydicom

        from ..dicom import is_dicom
        from ..dicom_results import results_for
        from ..dicomweb import Unavailable, store_results
        try:
            with (io.BytesIO(data) if data is not None else open(r.source, "rb")) as f:
                if not is_dicom(f.read(132)):
                    self.not_dicom += 1
                    return
                f.seek(0)
                source = pydicom.dcmread(f, stop_before_pixels=True)
            sr, sc = results_for(source, r, scan.pixels, scan.maxval, self.spec, self.digest)
            if self.client is not None:
                try:  # a server that is down costs each input one request, not three and 3 s
                    why = store_results(self.client, [sr, sc],
                                        attempts=1 if self.server_down else 3)
                except Unavailable as e:
                    self.server_down = True
                    raise OSError(f"the DICOMweb server {e}") from None
                self.server_down = False
                if self.audit is not None:
                    from ..audit import MINOR_FAILURE, SUCCESS
                    self.audit.sent(self.target, [sr, sc], MINOR_FAILURE if why else SUCCESS,
                                    why or None)
                if why:
                    raise OSError(why)
            else:
                name = self.names(r.source)
                sr.save_as(self.folder / f"{name}.SR.dcm", enforce_file_format=True)
                sc.save_as(self.folder / f"{name}.SC.dcm", enforce_file_format=True)
            self.written += 1
        except Exception as e:  # the row is written; missing DICOM results are reported
            self.missed(r.source, "DICOM results", e)


def write_side_outputs(writers, r, max_value=None, remote=None):
    """Overlays and DICOM results of one classified input; they need the scan itself, decoded
    again (with the run's ``max_value``; a DICOMweb instance from the bytes ``remote`` kept),
    once for all of them. A failure here is counted and logged, never fatal. Returns the scan
    (for the results page), or None where it no longer decodes."""
    from ..decode import decode_bytes, read_image
    from ..dicomweb import is_dicomweb
    from ..errors import InputError
    data = None
    try:
        if remote is not None and is_dicomweb(r.source):
            data = remote.fetch_again(r.source)
            scan = decode_bytes(data, r.source, None, max_value)
        else:
            scan = read_image(r.source, max_value=max_value)
    except InputError as e:  # changed on disk (or on the server) since it was scored
        for w in writers:
            w.problems.append((r.source, f"no longer decodes: {e.reason}"))
        log.warning("%s: no heatmap or DICOM results: %s", r.source, e.reason)
        return None
    for w in writers:
        w.write(r, scan, data)
    return scan
