"""Index of the chest X-ray dataset (published layout) and the patient-grouped validation split.

Labels and patient ids come from file names:

- ``PNEUMONIA/personN_bacteria_K.jpeg`` -> bacterial, patient ``personN``
- ``PNEUMONIA/personN_virus_K[_J].jpeg`` -> viral, patient ``personN``
- ``NORMAL/[NORMAL2-]IM-NNNN-KKKK[-JJJJ].jpeg`` -> normal, patient ``[NORMAL2-]IM-NNNN``

A name matching none of these is an error, never a guess.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Output order of every model this project trains; written into the ONNX metadata.
CLASS_NAMES = ("normal", "bacterial", "viral")

#: ``../shared/data`` beside the project root, unless XRAY_DATA points elsewhere.
DATA_ROOT = Path(os.environ.get("XRAY_DATA")
                 or Path(__file__).resolve().parent.parent.parent / "shared" / "data")

_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+(?:-\d+)?\.jpe?g$", re.IGNORECASE)
_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+(?:_\d+)?\.jpe?g$", re.IGNORECASE)
_KIND = {"bacteria": "bacterial", "virus": "viral"}


@dataclass(frozen=True)
class Record:
    path: str
    label: int  # index into CLASS_NAMES
    patient: str

    @property
    def class_name(self):
        return CLASS_NAMES[self.label]


def parse_name(folder, name):
    """(label, patient) for a file ``name`` inside class folder ``folder`` (NORMAL/PNEUMONIA)."""
    if folder == "NORMAL":
        m = _NORMAL.match(name)
        if m:
            return CLASS_NAMES.index("normal"), m.group(1)
    elif folder == "PNEUMONIA":
        m = _PNEUMONIA.match(name)
        if m:
            return CLASS_NAMES.index(_KIND[m.group(2).lower()]), m.group(1)
    else:
        raise ValueError(f"unknown class folder {folder!r} (expected NORMAL or PNEUMONIA)")
    raise ValueError(f"cannot derive label and patient from {folder}/{name}")


def scan_split(root):
    """Records for every image under ``root/{NORMAL,PNEUMONIA}``, sorted by path."""
    root = Path(root)
    records = []
    for folder in ("NORMAL", "PNEUMONIA"):
        d = root / folder
        if not d.is_dir():
            raise FileNotFoundError(f"missing class folder {d}")
        for name in sorted(os.listdir(d)):
            label, patient = parse_name(folder, name)
            records.append(Record(str(d / name), label, patient))
    if not records:
        raise FileNotFoundError(f"no images under {root}")
    return records


def patient_split(records, val_fraction=0.15, seed=0):
    """Split records into (train, val) by patient, stratified by class, seeded.

    Patients are grouped by their majority class, shuffled with ``seed`` and assigned to
    validation until each class holds about ``val_fraction`` of its images. No patient
    appears on both sides.
    """
    rng = np.random.default_rng(seed)
    by_patient = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    val_patients = set()
    for label in range(len(CLASS_NAMES)):
        patients = sorted(p for p, rs in by_patient.items()
                          if np.bincount([r.label for r in rs], minlength=len(CLASS_NAMES)).argmax()
                          == label)
        rng.shuffle(patients)
        target = val_fraction * sum(len(by_patient[p]) for p in patients)
        taken = 0
        for p in patients:
            if taken >= target:
                break
            val_patients.add(p)
            taken += len(by_patient[p])
    train = [r for r in records if r.patient not in val_patients]
    val = [r for r in records if r.patient in val_patients]
    return train, val


def load_splits(data_root=DATA_ROOT, val_fraction=0.15, seed=0):
    """{'train', 'val', 'test'} record lists: train/val carved from the published train split."""
    root = Path(data_root) / "chest_xray"
    train, val = patient_split(scan_split(root / "train"), val_fraction, seed)
    return {"train": train, "val": val, "test": scan_split(root / "test")}


def limit_per_class(records, n):
    """The first ``n`` records of each class (for smoke runs)."""
    out = []
    for label in range(len(CLASS_NAMES)):
        out += [r for r in records if r.label == label][:n]
    return out
