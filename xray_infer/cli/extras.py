"""What ``classify`` writes beside the rows for each classified input: overlay PNGs
(``--heatmaps``) and DICOM SR + Secondary Capture (``--dicom-out``)."""
import logging
import os
from pathlib import Path

from ..inputs import input_key

log = logging.getLogger("xray_infer.cli")


class Names:
    """Output names after inputs (``scan``); a name met twice in one run gets a suffix from the
    input's path, so nothing is overwritten."""

    def __init__(self):
        self.used = set()

    def __call__(self, source):
        import hashlib
        name = Path(source).stem
        if name in self.used:  # the key's bytes: a name that is not UTF-8 has no other
            name += "-" + hashlib.sha1(os.fsencode(input_key(source))).hexdigest()[:8]
        self.used.add(name)
        return name


class Overlays:
    """One overlay PNG per classified input: the scan, its heatmap, label and probabilities."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names, self.written, self.failed = Names(), 0, 0
        self.paths = {}  # input -> its overlay, for the results page

    def write(self, r, scan):
        import cv2

        from ..heatmap import caption, overlay
        try:
            path = self.folder / f"{self.names(r.source)}.png"
            ok, png = cv2.imencode(".png", overlay(scan.pixels, scan.maxval, r.heatmap,
                                                   caption(r)))
            if not ok:
                raise OSError("OpenCV could not encode the PNG")
            # Python writes the file, whatever bytes its name holds (OpenCV takes UTF-8 text)
            path.write_bytes(png.tobytes())
            self.written += 1
            self.paths[r.source] = path
        except Exception as e:  # the row is written; a missing picture is reported, not fatal
            self.failed += 1
            log.warning("%s: heatmap not written: %s", r.source, e)


class DicomResults:
    """For each classified DICOM input, a Structured Report and a Secondary Capture of its
    heatmap (``name.SR.dcm``, ``name.SC.dcm``); other inputs are counted, not converted."""

    def __init__(self, folder, clf):
        from ..model import model_digest
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        # the variant that scores (int8, float16 or the model itself) is the one named
        self.spec, self.digest = clf.spec, model_digest(clf.variant.path)
        self.names, self.written, self.not_dicom, self.failed = Names(), 0, 0, 0

    def write(self, r, scan):
        import pydicom

        from ..dicom import is_dicom
        from ..dicom_results import results_for
        try:
            with open(r.source, "rb") as f:
                head = f.read(132)
            if not is_dicom(head):
                self.not_dicom += 1
                return
            source = pydicom.dcmread(r.source, stop_before_pixels=True)
            name = self.names(r.source)
            sr, sc = results_for(source, r, scan.pixels, scan.maxval, self.spec, self.digest)
            sr.save_as(self.folder / f"{name}.SR.dcm", enforce_file_format=True)
            sc.save_as(self.folder / f"{name}.SC.dcm", enforce_file_format=True)
            self.written += 1
        except Exception as e:  # the row is written; missing DICOM results are reported
            self.failed += 1
            log.warning("%s: DICOM results not written: %s", r.source, e)


def write_extras(writers, r, max_value=None):
    """Overlays and DICOM results of one classified input; they need the scan itself, decoded
    again (with the run's ``max_value``), once for all of them. A failure here is counted and
    logged, never fatal. Returns the scan (for the results page), or None where it no longer
    decodes."""
    from ..decode import read_image
    from ..errors import DecodeError
    try:
        scan = read_image(r.source, max_value=max_value)
    except DecodeError as e:  # changed on disk since it was scored
        for w in writers:
            w.failed += 1
        log.warning("%s: no heatmap or DICOM results: %s", r.source, e.reason)
        return None
    for w in writers:
        w.write(r, scan)
    return scan
