"""The scope gate, evaluated: what it keeps of the radiographs the model was made for, what it
refuses of the images it was not, and what it costs.

    python -m benchmarks scope --json docs/bench/scope.json   # then: python -m benchmarks report

In-distribution: the validation split (the threshold was set on it), the test split and the 240
full-resolution originals. Out of scope, in two collections kept apart:
- development (``ood-dev/`` beside the dataset): looked at while building the gate; never used
  to set anything, reported for completeness; with it, the adult head's development sets (the
  adult films its fit held out, and ``peds-other-dev``'s children of another hospital);
- independent: pydicom's bundled test files (less any file also in ``ood-dev``), the images
  bundled with scikit-image and scikit-learn, and synthetic cases made from test scans (rotated
  90 degrees, upside down, inverted polarity, a heavy crop, blank, noise, text).
The pydicom files are read as files, their headers consulted as they would be in use; every
other set is classified as pixels, by the image gate alone (the rates of an image arriving
without a trustworthy header). Each row records which gate refused what (``refused_by``).
"""
import glob
import hashlib
import os
import time
from collections import Counter

import cv2
import numpy as np

from xray_infer import Classifier
from xray_infer.decode import read_image

from . import common

SYNTHETIC = ("rotated 90", "upside down", "inverted", "crop (centre 30%)", "blank", "noise",
             "text")


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _dev_files():
    return sorted(glob.glob(str(common.DATA / "ood-dev" / "*" / "*.*")))


def _pydicom_files(exclude):
    import pydicom.data
    out = []
    for f in sorted(pydicom.data.get_testdata_files()):
        if f.lower().endswith(".dcm") and os.path.isfile(f) and _digest(f) not in exclude:
            out.append(f)
    return out


def _library_images():
    """(name, 2-D uint8 array) of the images scikit-image and scikit-learn bundle."""
    out = []
    from sklearn.datasets import load_sample_images
    for name, img in zip(("china", "flower"), load_sample_images().images):
        out.append((f"sklearn {name}", cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)))
    try:
        import skimage.data as sk
    except ImportError:
        return out, "scikit-image not installed (pip install scikit-image): its images left out"
    for name in ("astronaut", "brick", "camera", "cat", "checkerboard", "chelsea", "clock",
                 "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "logo",
                 "moon", "page", "rocket", "text", "retina", "microaneurysms", "brain",
                 "cell", "human_mitosis", "immunohistochemistry", "hubble_deep_field",
                 "motorcycle_left", "shepp_logan_phantom", "skin"):
        try:
            img = getattr(sk, name)()
        except Exception:  # an image that needs a download (pooch) is not available offline
            continue
        if img.ndim == 3 and img.shape[0] < 8:  # a volume: its middle slice
            img = img[img.shape[0] // 2]
        if img.ndim == 3:
            img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]).astype(np.uint8),
                               cv2.COLOR_RGB2GRAY)
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = img.astype(np.float64)
            img = ((img - img.min()) / max(np.ptp(img), 1e-9) * 255).astype(np.uint8)
        if img.ndim == 3:  # 3-D volumes of other layouts
            img = img[img.shape[0] // 2]
        out.append((f"skimage {name}", np.ascontiguousarray(img)))
    return out, None


def _synthetic(test_paths, n, seed=0):
    """{case: [arrays]} made from the first ``n`` test scans."""
    rng = np.random.default_rng(seed)
    cases = {c: [] for c in SYNTHETIC}
    for p in test_paths[:n]:
        x = read_image(p).pixels
        h, w = x.shape
        cases["rotated 90"].append(np.ascontiguousarray(np.rot90(x)))
        cases["upside down"].append(np.ascontiguousarray(x[::-1]))
        cases["inverted"].append(255 - x)
        cases["crop (centre 30%)"].append(np.ascontiguousarray(
            x[int(h * .35):int(h * .65), int(w * .35):int(w * .65)]))
    for _ in range(n):
        cases["blank"].append(np.full((512, 640), int(rng.integers(0, 256)), np.uint8))
        cases["noise"].append(rng.integers(0, 256, (512, 640), dtype=np.uint8))
        page = np.full((512, 640), 255, np.uint8)
        for line in range(12):
            cv2.putText(page, f"Report {rng.integers(1e6)} lorem ipsum dolor", (10, 40 + 38 * line),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.8, 0, 2)
        cases["text"].append(page)
    return cases


def _rates(results):
    """(n, classified, out of scope, failed)."""
    statuses = [r.status for r in results]
    return (len(statuses), statuses.count("classified"), statuses.count("out_of_scope"),
            statuses.count("failed"))


def _accuracy(results, labels):
    pairs = [(r.label, y) for r, y in zip(results, labels) if r.ok]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else float("nan")


def scope(a):
    from trainer.dataset import load_splits
    clf = Classifier(a.model, providers=a.providers, batch_size=a.batch_size)
    off = Classifier(a.model, providers=a.providers, batch_size=a.batch_size, scope=False)
    spec = clf.spec
    splits = load_splits(common.DATA, scheme=spec.validation_split)
    names = spec.class_names
    rows, payload = [], {"threshold": spec.scope["threshold"], "rule": spec.scope["threshold_rule"],
                         "in_distribution": {}, "development": {}, "independent": {}}

    def add(group, name, results, labels=None):
        n, ok, refused, failed = _rates(results)
        entry = {"n": n, "classified": ok, "out_of_scope": refused, "failed": failed,
                 "refused_by": dict(sorted(Counter(r.refused_by for r in results
                                                   if r.status == "out_of_scope").items()))}
        if labels is not None:
            entry["accuracy_classified"] = _accuracy(results, labels)
            entry["accuracy_all"] = _accuracy(off.classify(inputs[name]), labels)
        payload[group][name] = entry
        share = ok / n if group == "in_distribution" else refused / max(n - failed, 1)
        rows.append([group, name, n, ok, refused, failed,
                     f"{share:.1%} {'kept' if group == 'in_distribution' else 'refused'}",
                     f"{entry.get('accuracy_classified', float('nan')):.4f}"
                     if labels is not None else ""])

    inputs = {}
    for split in ("val", "test"):
        inputs[split] = [r.path for r in splits[split]]
        add("in_distribution", split, clf.classify(inputs[split]),
            [names[r.label] for r in splits[split]])
    fullres = common.fullres_paths(a.limit)
    inputs["fullres"] = fullres
    add("in_distribution", "fullres", clf.classify(fullres))

    dev = _dev_files()
    by_folder = {}
    for f in dev:
        by_folder.setdefault(os.path.basename(os.path.dirname(f)), []).append(f)
    for folder, files in sorted(by_folder.items()):
        add("development", folder, clf.classify(files))

    # The adult head's development sets: adults it never saw (by patient, as its fit held them
    # out), view by view, and another hospital's children by age band (kept is what it should do).
    from trainer.adult_head import AGE_BANDS, films, held_out_adult
    adults = [f for f in films(common.DATA / "adult-dev") if held_out_adult(f.patient)]
    for view in ("PA", "AP"):
        add("development", f"adult films held out of the adult head's fit, {view}",
            clf.classify([f.path for f in adults if f.view == view]))
    children = films(common.DATA / "peds-other-dev")
    for lo, hi in AGE_BANDS:
        add("development", f"another hospital's children aged {lo}-{hi} (peds-other-dev)",
            clf.classify([f.path for f in children if lo <= f.age <= hi]))

    exclude = {_digest(f) for f in dev}
    pyd = _pydicom_files(exclude)
    add("independent", "pydicom test files (CT, MR, US, SC, RT...)", clf.classify(pyd))
    library, note = _library_images()
    add("independent", "scikit-image / scikit-learn images",
        clf.classify([img for _, img in library]))
    payload["independent_note"] = note
    payload["library_images"] = [n for n, _ in library]
    test_paths = [r.path for r in splits["test"]]
    for case, arrays in _synthetic(test_paths, a.limit or 100).items():
        add("independent", f"synthetic: {case}", clf.classify(arrays))

    # Cost: the same pass over the full-resolution scans with the gate on and off, interleaved.
    work = fullres * max(1, a.cycle)
    times = {"on": [], "off": []}
    for _ in range(a.repeat):
        for label, c in (("on", clf), ("off", off)):
            t = time.perf_counter()
            c.classify(work)
            times[label].append(time.perf_counter() - t)
    on, off_t = common.median(times["on"]), common.median(times["off"])
    payload["throughput"] = {"scans": len(work), "scope_on_per_s": len(work) / on,
                             "scope_off_per_s": len(work) / off_t,
                             "ratio_on_over_off": off_t / on}
    payload["model"] = {"version": spec.model_version, "sha256": _digest(clf.model_path)}
    common.print_table("Scope gate (image threshold "
                       f"{spec.scope['threshold']:.0f}, {spec.scope['threshold_rule']})",
                       ["collection", "set", "n", "classified", "out of scope", "failed",
                        "rate", "accuracy (classified)"], rows)
    t = payload["throughput"]
    print(f"end to end, {t['scans']} full-resolution scans: {t['scope_on_per_s']:.1f} scans/s "
          f"with the gate, {t['scope_off_per_s']:.1f} without ({t['ratio_on_over_off']:.3f}x)")
    common.save(a.json, "scope", payload)
    return payload
