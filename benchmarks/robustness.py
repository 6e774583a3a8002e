"""Presentation robustness: does a scan keep its label and its scope decision when it reaches
the model as real exports deliver it, rather than as the dataset's JPEG?

    python -m benchmarks robustness --json docs/bench/robustness.json --out docs/robustness.md

Each scan is decoded once (8-bit grey, full size), changed as an export would change it, encoded
and classified as bytes; its original file is the reference. Per variant (float32 and int8):
label agreement (both classified, same label), scope agreement (same decision, in or out) and
how many the change newly refused or let in. Sets: the published test split (224x224; agreement
is not accuracy, so reporting it here chooses nothing) and the 240 full-resolution originals
(training images: agreement only, never accuracy). Conditions:

- 16-bit PNG holding N-bit values in the low bits (what ``cv2.imwrite`` of a DICOM's pixel array
  writes), N = 10, 12, 14, 16, without a declared depth and with PNG's sBIT (docs/inputs.md);
- JPEG at quality 95, 75, 50;
- the long side resized to 2048, 1024, 512 px (area down, cubic up), as PNG;
- gamma 0.8 and 1.25, and a 1-99 percentile window, as PNG;
- PNG instead of JPEG (the same pixels: a check that the harness changes nothing itself).
"""
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from xray_infer import Classifier
from xray_infer.cpu import int8_dot_product
from xray_infer.decode import read_image

from . import common

DEPTHS = (10, 12, 14, 16)
VARIANTS = ("float32", "int8")


def _png(pixels):
    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _with_sbit(png, bits):
    """``png`` with an sBIT chunk declaring ``bits`` significant bits of grey."""
    body = bytes([bits])
    chunk = struct.pack(">I", 1) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body))
    end_of_header = 8 + 8 + 13 + 4  # signature, IHDR's length and type, its 13 bytes, its CRC
    return png[:end_of_header] + chunk + png[end_of_header:]


def _depth(img, bits):
    return np.round(img.astype(np.float64) / 255 * (2 ** bits - 1)).astype(np.uint16)


def _resize(img, side):
    h, w = img.shape
    k = side / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)


def _gamma(img, g):
    return np.round(255 * (img / 255.0) ** g).astype(np.uint8)


def _window(img):
    lo, hi = np.percentile(img, (1, 99))
    return np.round(np.clip((img - lo) / max(hi - lo, 1), 0, 1) * 255).astype(np.uint8)


def _jpeg(img, quality):
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes()


def conditions():
    """[(name, group, function from an 8-bit grey scan to encoded bytes)]."""
    out = []
    for bits in DEPTHS:
        out.append((f"16-bit PNG, {bits}-bit values, no declared depth", "bit depth",
                    lambda img, b=bits: _png(_depth(img, b))))
        out.append((f"16-bit PNG, {bits}-bit values, sBIT {bits}", "bit depth",
                    lambda img, b=bits: _with_sbit(_png(_depth(img, b)), b)))
    for q in (95, 75, 50):
        out.append((f"JPEG quality {q}", "compression", lambda img, q=q: _jpeg(img, q)))
    for side in (2048, 1024, 512):
        out.append((f"long side {side} px", "size", lambda img, s=side: _png(_resize(img, s))))
    for g in (0.8, 1.25):
        out.append((f"gamma {g}", "intensity", lambda img, g=g: _png(_gamma(img, g))))
    out.append(("1-99 percentile window", "intensity", lambda img: _png(_window(img))))
    out.append(("PNG instead of JPEG", "format", _png))
    return out


def _agreement(reference, changed):
    label = sum(a.ok and b.ok and a.label == b.label for a, b in zip(reference, changed))
    scope = sum((a.status == "out_of_scope") == (b.status == "out_of_scope")
                for a, b in zip(reference, changed))
    refused = sum(a.status != "out_of_scope" and b.status == "out_of_scope"
                  for a, b in zip(reference, changed))
    admitted = sum(a.status == "out_of_scope" and b.status != "out_of_scope"
                   for a, b in zip(reference, changed))
    failed = sum(b.status == "failed" for b in changed)
    both = sum(a.ok and b.ok for a, b in zip(reference, changed))
    return {"n": len(reference), "classified_both": both, "label_agree": label,
            "label_agreement": label / both if both else None,
            "scope_agreement": scope / len(reference), "newly_refused": refused,
            "newly_admitted": admitted, "failed": failed}


def _sets(limit):
    test = sorted(str(p) for p in (common.DATA / "chest_xray" / "test").glob("*/*.jpeg"))
    if not test:
        raise SystemExit(f"no test split under {common.DATA / 'chest_xray'} (set --data)")
    fullres = common.fullres_paths()
    if limit:
        test, fullres = test[:limit], fullres[:limit]
    return {"test split (224x224)": test, "full-resolution originals": fullres}


def robustness(a):
    t0 = time.time()
    classifiers = {v: Classifier(a.model, precision=v) for v in VARIANTS}
    rows = []
    for set_name, paths in _sets(a.limit).items():
        scans = [read_image(p).pixels for p in paths]  # 8-bit grey, full size
        reference = {v: clf.classify(paths) for v, clf in classifiers.items()}
        for name, group, change in conditions():
            blobs = [change(img) for img in scans]
            for v, clf in classifiers.items():
                changed = clf.classify(blobs)
                rows.append({"set": set_name, "condition": name, "group": group, "variant": v,
                             **_agreement(reference[v], changed)})
            del blobs
            print(f"{set_name}: {name} done ({time.time() - t0:.0f} s)", flush=True)
    table = [[r["set"], r["condition"], r["variant"], f"{r['label_agreement']:.3f}",
              f"{r['scope_agreement']:.3f}", r["newly_refused"], r["newly_admitted"],
              r["failed"]] for r in rows]
    header = ["set", "condition", "variant", "label agrees", "scope agrees", "newly refused",
              "newly admitted", "failed"]
    common.print_table("Agreement with the original file", header, table)
    dot = int8_dot_product()[0]
    common.save(a.json, "robustness", {"rows": rows, "int8_dot_product": dot,
                                       "seconds": round(time.time() - t0)})
    if a.out and a.json:
        Path(a.out).write_text(markdown(rows, common.machine(), dot))
        print(f"wrote {a.out}")


def markdown(rows, machine, int8_dot=True):
    """The docs page: one table per set, a row per condition, the two variants side by side."""
    lines = ["# Presentation robustness", "",
             "Does a scan keep its label and its scope decision when it arrives as real exports "
             "deliver it? Each scan is decoded once, changed as an export would change it, "
             "encoded and classified; its original file is the reference. *label*: of the scans "
             "classified both times, the share with the same label; *scope*: the share with the "
             "same scope decision; *+refused* / *+admitted*: scans the change newly refused or "
             "let in. The full-resolution originals are training images: agreement only, never "
             "accuracy.", "",
             f"Measured on {machine['cpu']} ({machine['cores']} cores), onnxruntime "
             f"{machine['onnxruntime']}, OpenCV {machine['opencv']}" +
             ("" if int8_dot else "; this CPU has no int8 dot-product instructions, so the "
              "int8 rows are ONNX Runtime's kernels for such CPUs (where `auto` picks float32)") +
             ". Made by:", "",
             "```bash",
             "python -m benchmarks robustness --json docs/bench/robustness.json "
             "--out docs/robustness.md",
             "```", ""]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == set_name]
        n = mine[0]["n"]
        lines += [f"## {set_name}, {n} scans", "",
                  "| condition | float32 label | float32 scope | float32 +refused / +admitted "
                  "| int8 label | int8 scope | int8 +refused / +admitted |",
                  "|---|---|---|---|---|---|---|"]
        for condition in dict.fromkeys(r["condition"] for r in mine):
            cells = [condition]
            for v in VARIANTS:
                r = next(x for x in mine if x["condition"] == condition and x["variant"] == v)
                label = "n/a" if r["label_agreement"] is None else f"{r['label_agreement']:.3f}"
                cells += [label, f"{r['scope_agreement']:.3f}",
                          f"{r['newly_refused']} / {r['newly_admitted']}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
