"""Results as DICOM objects, built with highdicom (the ``dicom`` extra).

For a classified DICOM scan: a Comprehensive SR following the measurement report template
(TID 1500) with the finding, each class probability and the algorithm's name, version and
model SHA-256; and a Secondary Capture of the heatmap overlay, labelled not for diagnostic use.
Both carry the source's patient and study, reference the source instance, start new series,
and name the model as IHE AI Results (AIR) asks: a Contributing Equipment item whose purpose
is "Processing Algorithm", with a Device UID derived from the model file (docs/dicomweb.md
lists the AIR points met and not met).
"""
import re

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from . import __version__, dicom
from .dicom import ALGORITHM, MANUFACTURER, SC_SERIES_DESCRIPTION  # noqa: F401 (named here too)
from .heatmap import caption, overlay

#: Series numbers of the objects this program writes (their series are new, so these only
#: order them after the source's series in a viewer).
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9101, 9102
DISCLAIMER = "NOT FOR DIAGNOSTIC USE: research software output"

#: SNOMED CT concepts of the findings this project's models name.
FINDINGS = {
    "normal": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    "bacterial": hd.sr.CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
    "viral": hd.sr.CodedConcept("75570004", "SCT", "Viral pneumonia"),
}
#: Chest X-ray, the procedure reported on.
PROCEDURE = hd.sr.CodedConcept("168731009", "SCT", "Standard chest X-ray")
#: A private coding scheme (designators starting "99" are private by the standard) for the
#: per-class probabilities, which no public code names.
PRIVATE_SCHEME = "99XRAYINFER"
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
#: IHE AIR's Purpose of Reference for the equipment that made a result: the algorithm.
PROCESSING_ALGORITHM = hd.sr.CodedConcept(*dicom.PROCESSING_ALGORITHM)
#: The private coding schemes the objects use, declared so that a validator or viewer knows
#: who answers for them (PS3.3 C.12.1.1.3, Coding Scheme Identification Sequence).
CODING_SCHEMES = (
    CodingSchemeIdentificationItem(
        PRIVATE_SCHEME, name="xray-infer class probabilities",
        responsible_organization="xray-infer project"),
    CodingSchemeIdentificationItem(
        "99IHE", name="IHE Radiology codes", responsible_organization="IHE International"),
)


#: Identifiers a result cannot do without: it must land in the source's patient, study and
#: series, and reference the source instance.
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: Type 2 patient and study attributes (PS3.3 C.7.1.1, C.7.2.1) the results copy: an absent
#: one is copied as empty, as the standard allows.
COPIED_TYPE_2 = ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "AccessionNumber", "ReferringPhysicianName", "StudyID")


#: What a LO value may not hold: backslash and control characters (ESC starts a character set
#: switch, which LO allows; CR, LF, NUL and the rest are not text).
_NOT_LO = re.compile(r"[\\\x00-\x1a\x1c-\x1f\x7f]")
#: A CS value (PS3.5 6.2): upper-case letters, digits, space and underscore, 16 at most.
_CS = re.compile(r"[A-Z0-9 _]{0,16}")


def source_problem(source, is_uid):
    """Why results cannot be built for ``source`` (a reason that names no value), or None."""
    for keyword in REQUIRED_UIDS:
        if keyword not in source:
            return f"no {keyword}"
        if not is_uid(str(source[keyword].value)):
            return f"{keyword} is not a valid UID (PS3.5 9.1)"
    patient = source.get("PatientID", "")  # a backslash made it several values (VM > 1)
    patient = "" if patient is None else patient
    if not isinstance(patient, str) or len(patient) > 64 or _NOT_LO.search(patient):
        # PS3.5 6.2, LO: one value of at most 64 characters, no backslash (it separates
        # values) and no control characters; forwarded as sent, such a value would corrupt
        # the PACS's record
        return "PatientID not a valid LO: one value, 64 chars, no controls"
    if not patient.strip():
        return "no PatientID: a result could not be filed with its patient"
    modality = source.get("Modality", "")
    modality = "" if modality is None else modality
    if not isinstance(modality, str) or not _CS.fullmatch(modality):
        # PS3.5 6.2, CS: capitals, digits, space and underscore, 16 characters; a line feed
        # in it would reach the PACS, and the scope gate would read a modality that is none
        return "Modality not a valid CS: capitals, digits, 16 chars"
    if not modality.strip():
        return "no Modality"
    return None


def check_buildable(source, spec, digest):
    """Raise what building the results for ``source`` would raise (a malformed date, a value
    highdicom refuses), by building them for a placeholder result on a small image: what the
    node checks before it acknowledges an instance."""
    from .result import Result
    names = list(spec.class_names)
    placeholder = Result("<check>", names[0], {n: 1.0 / len(names) for n in names},
                         heatmap=np.zeros((64, 64), np.float32))
    results_for(source, placeholder, np.zeros((64, 64), np.float32), 1.0, spec, digest)


def is_own_result(ds, digest):
    """Whether ``ds`` is a Secondary Capture this model wrote: its instance UID is the one
    derived from the source it references (see ``result_uids``), not just a name it carries."""
    try:  # the SC sits in its source's patient and study
        whose = _whose(ds)
        source = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    except (AttributeError, IndexError, KeyError):
        return False
    return str(ds.get("SOPInstanceUID", "")) == \
        generate_uid(entropy_srcs=[*whose, source, digest, "SC"])


def results_for(source, result, pixels, maxval, spec, digest):
    """(SR, SC) for one classified source dataset."""
    missing = [k for k in COPIED_TYPE_2 if k not in source]
    if missing:
        source = Dataset(source)  # a new element dict: the caller's dataset is left as it was
        for k in missing:
            setattr(source, k, "")
    return (structured_report(source, result, spec, digest),
            secondary_capture(source, result, pixels, maxval, spec, digest))


def _device_uid(digest):
    # The same model file is the same device in every report; any other file (another version,
    # another variant of one version) another device.
    return generate_uid(entropy_srcs=[digest])


def algorithm_equipment(spec, digest):
    """The Contributing Equipment item naming the algorithm that made a result (IHE AIR)."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = f"{ALGORITHM} {spec.precision}"[:64]
    item.SoftwareVersions = [spec.model_version, f"xray-infer {__version__}"]
    item.DeviceUID = _device_uid(digest)
    item.ContributionDescription = f"Classification by the model file with SHA-256 {digest}"
    return item


def _declare(obj, spec, digest):
    """What every result object carries besides its content: the algorithm as contributing
    equipment (after any the object already names), and the private coding schemes."""
    obj.ContributingEquipmentSequence = [*obj.get("ContributingEquipmentSequence", []),
                                         algorithm_equipment(spec, digest)]
    obj.CodingSchemeIdentificationSequence = list(CODING_SCHEMES)
    return obj


def result_uids(source, digest, kind):
    """(series UID, instance UID) of the ``kind`` ("SR" or "SC") result for ``source`` by the
    model with SHA-256 ``digest``: derived from those, so scoring an instance again gives the
    same UIDs and a PACS replaces rather than duplicates (what makes a retried forward, or a
    restart after a crash, deliver each result once). The source's patient and study are part
    of what they derive from: a modality that reuses one SOP Instance UID for two patients
    gets two results, never one that a PACS would keep for both."""
    whose = _whose(source)
    series = generate_uid(entropy_srcs=[*whose, source.SeriesInstanceUID, digest, kind])
    instance = generate_uid(entropy_srcs=[*whose, source.SOPInstanceUID, digest, kind])
    return series, instance


def _whose(ds):
    """The patient and study of a source (or of a result, which sits in its source's)."""
    return [str(ds.get("PatientID", "")), str(ds.StudyInstanceUID)]


def structured_report(source, result, spec, digest):
    """A Comprehensive SR (TID 1500) of ``result`` for the ``source`` dataset."""
    if result.label not in FINDINGS:
        raise ValueError(f"no coded finding for label {result.label!r}")
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(digest), name=ALGORITHM, manufacturer_name=MANUFACTURER,
            model_name=spec.model_version))
    algorithm = hd.sr.AlgorithmIdentification(
        name=ALGORITHM, version=spec.model_version,
        parameters=[f"model SHA-256 {digest}", f"precision {spec.precision}"])
    probabilities = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(f"P-{name.upper()}", PRIVATE_SCHEME,
                                    f"Probability of {FINDINGS[name].meaning.lower()}"),
            value=float(p), unit=NO_UNITS, algorithm_id=algorithm)
        for name, p in result.probabilities.items()]
    tracking = hd.sr.TrackingIdentifier(uid=result_uids(source, digest, "track")[1],
                                        identifier="xray-infer classification")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.Finding,
                                                             FINDINGS[result.label])],
        measurements=probabilities)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE, imaging_measurements=[group])
    series_uid, instance_uid = result_uids(source, digest, "SR")
    return _declare(hd.sr.ComprehensiveSR(
        evidence=[source], content=report, series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER, sop_instance_uid=instance_uid, instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"{ALGORITHM} {spec.model_version} result, not for diagnosis"),
        spec, digest)


def secondary_capture(source, result, pixels, maxval, spec, digest):
    """A Secondary Capture of the heatmap overlay, in the source's patient and study."""
    picture = overlay(pixels, maxval, result.heatmap, caption(result))[:, :, ::-1]  # BGR->RGB
    series_uid, instance_uid = result_uids(source, digest, "SC")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(picture),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=instance_uid, instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=tuple(source.get("PatientOrientation", None) or ("L", "F"))[:2],
        series_description=SC_SERIES_DESCRIPTION)
    sc.BurnedInAnnotation = "YES"
    # An unpaired body part: Laterality (type 2C) is then absent rather than empty.
    sc.BodyPartExamined = source.get("BodyPartExamined", "") or "CHEST"
    sc.ImageComments = (f"Class activation map of '{result.label}' over the source image. "
                        f"{DISCLAIMER}.")
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return _declare(sc, spec, digest)
