"""Dataset index: labels and patients from file names, and the patient-grouped split."""
from collections import Counter

import pytest

from trainer.dataset import (CLASS_NAMES, VAL_SPLITS, load_splits, parse_name, patient_series,
                             patient_split, scan_split)


@pytest.mark.parametrize("folder,name,label,patient", [
    ("NORMAL", "IM-0115-0001.jpeg", "normal", "IM-0115"),
    ("NORMAL", "IM-0429-0001-0002.jpeg", "normal", "IM-0429"),
    ("NORMAL", "NORMAL2-IM-0383-0001.jpeg", "normal", "NORMAL2-IM-0383"),
    ("PNEUMONIA", "person1_bacteria_1.jpeg", "bacterial", "person1"),
    ("PNEUMONIA", "person447_virus_921_1.jpeg", "viral", "person447"),
])
def test_parse_name(folder, name, label, patient):
    lab, pat = parse_name(folder, name)
    assert CLASS_NAMES[lab] == label and pat == patient


@pytest.mark.parametrize("folder,name", [
    ("NORMAL", "person1_bacteria_1.jpeg"), ("PNEUMONIA", "IM-0001-0001.jpeg"),
    ("PNEUMONIA", "person1_fungus_1.jpeg"), ("NORMAL", "scan.png"), ("OTHER", "IM-0001-0001.jpeg"),
])
def test_unknown_names_are_errors(folder, name):
    with pytest.raises(ValueError):
        parse_name(folder, name)


def test_counts_match_the_dataset_readme(data):
    root = data / "chest_xray"
    for split, expected in {"train": (1341, 2530, 1345), "test": (234, 242, 148)}.items():
        c = Counter(r.class_name for r in scan_split(root / split))
        assert tuple(c[n] for n in CLASS_NAMES) == expected


@pytest.mark.parametrize("scheme", list(VAL_SPLITS))
def test_split_is_patient_disjoint_stratified_and_repeatable(data, scheme):
    splits = load_splits(data, scheme=scheme)
    train, val = splits["train"], splits["val"]
    assert len(train) + len(val) == 5216
    assert not {r.patient for r in train} & {r.patient for r in val}
    for label in range(3):
        n_all = sum(r.label == label for r in train + val)
        share = sum(r.label == label for r in val) / n_all
        assert 0.13 < share < 0.19, (CLASS_NAMES[label], share)
    again = load_splits(data, scheme=scheme)
    assert [r.path for r in again["val"]] == [r.path for r in val]


def test_random_split_depends_on_the_seed(data):
    train, val = patient_split(scan_split(data / "chest_xray" / "train"), scheme="random")
    other, _ = patient_split(train + val, seed=1, scheme="random")
    assert {r.path for r in other} != {r.path for r in train}


def test_earliest_split_holds_out_the_lowest_numbers_of_each_series(data):
    splits = load_splits(data, scheme="earliest")
    numbers = {}
    for side in ("train", "val"):
        for r in splits[side]:
            series, number = patient_series(r.patient)
            numbers.setdefault((series, side), []).append(number)
    assert {s for s, _ in numbers} == {"person", "IM-", "NORMAL2-IM-"}
    for series in ("person", "IM-", "NORMAL2-IM-"):
        val, train = numbers[series, "val"], sorted(numbers[series, "train"])
        assert max(val) < train[len(train) // 4], series


def test_patient_series():
    assert patient_series("person12") == ("person", 12)
    assert patient_series("NORMAL2-IM-0042") == ("NORMAL2-IM-", 42)
    with pytest.raises(ValueError):
        patient_series("IM-")
    with pytest.raises(ValueError):
        load_splits(scheme="by-date")


def test_byte_identical_duplicates_stay_on_one_side(data):
    import hashlib
    splits = load_splits(data)  # the default scheme
    side = {}
    for name in ("train", "val"):
        for r in splits[name]:
            digest = hashlib.sha256(open(r.path, "rb").read()).hexdigest()
            side.setdefault(digest, set()).add(name)
    assert all(len(s) == 1 for s in side.values())
