"""DICOM files for the tests, made here from the bundled sample scans: one of any pixel layout,
bit depth and transfer syntax (``write_dicom``), and a study of chest radiographs of one
patient (``chest_dicoms``)."""
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from helpers import SAMPLES
from xray_infer.decode import read_image


def write_dicom(path, pixels, bits_stored, photometric="MONOCHROME2", syntax=ExplicitVRLittleEndian,
                **extra):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = extra.pop("SamplesPerPixel", 1)
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for k, v in extra.items():
        setattr(ds, k, v)
    if syntax.is_compressed:  # not a valid codestream: decoding must fail with a clear error
        from pydicom.encaps import encapsulate
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a real JPEG 2000 codestream"])
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_dicoms(folder, n, patient):
    """``n`` DX instances of the sample scans, one study, unique UIDs, patient ``patient``."""
    folder.mkdir(parents=True, exist_ok=True)
    study = pydicom.uid.generate_uid()
    series = pydicom.uid.generate_uid()
    out = []
    for i in range(n):
        scan = SAMPLES[i % len(SAMPLES)]
        out.append(write_dicom(
            folder / f"{patient}-{i:03d}.dcm", read_image(scan).pixels, 8, PatientName="Test^Child",
            PatientID=patient, PatientBirthDate="20200101", PatientSex="O", StudyInstanceUID=study,
            SeriesInstanceUID=series, StudyDate="20230101", StudyTime="120000",
            AccessionNumber=patient[:16], ReferringPhysicianName="", StudyID="1", SeriesNumber=1,
            InstanceNumber=i + 1))
    return out
