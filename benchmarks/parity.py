"""Accuracy parity: torch vs ONNX Runtime, Cython kernel vs reference preprocessing, and
full-resolution scans vs their 224x224 copies."""
from pathlib import Path

import numpy as np

from xray_infer import Classifier
from xray_infer.decode import read_image
from xray_infer.preprocess import preprocess, reference_preprocess

from . import common
from .common import fullres_paths, print_table, save


def parity(args):
    from trainer.dataset import scan_split
    from trainer.export import load_checkpoint, ort_logits
    import torch
    # Scope off: parity is of the classifications themselves (docs/bench/scope.json has the gate).
    clf = Classifier(args.model, providers=["CPUExecutionProvider"], scope=False,
                     precision="float32")
    model, _ = load_checkpoint(args.checkpoint)
    s = clf.spec
    records = scan_split(common.DATA / "chest_xray" / "test")
    if args.limit:
        records = records[::max(1, len(records) // args.limit)][:args.limit]
    kern, ref = [], []
    for r in records:
        img = read_image(r.path)
        kw = dict(size=s.input_size, mean=s.mean, std=s.std, maxval=img.maxval)
        kern.append(preprocess(img.pixels, **kw))
        ref.append(reference_preprocess(img.pixels, **kw))
    kern, ref = np.stack(kern)[:, None], np.stack(ref)[:, None]
    ort_k, ort_r = ort_logits(clf.session, kern), ort_logits(clf.session, ref)
    with torch.no_grad():
        torch_k = model(torch.from_numpy(kern)).numpy()
    labels = np.array([r.label for r in records])
    res = {"n_test": len(records),
           "torch_vs_ort_max_abs_logit_diff": float(np.abs(torch_k - ort_k).max()),
           "torch_vs_ort_prediction_disagreements": int((torch_k.argmax(1) != ort_k.argmax(1)).sum()),
           "kernel_vs_reference_max_abs_input_diff": float(np.abs(kern - ref).max()),
           "kernel_vs_reference_prediction_disagreements": int((ort_k.argmax(1) != ort_r.argmax(1)).sum()),
           "test_accuracy_ort": float((ort_k.argmax(1) == labels).mean())}
    # Full-resolution scans against their 224x224 copies in chest_xray/train.
    full = fullres_paths(args.limit)
    copies = [common.DATA / "chest_xray" / "train" / Path(p).parent.name / Path(p).name for p in full]
    pairs = [(f, str(c)) for f, c in zip(full, copies) if c.exists()]
    a = clf.classify([f for f, _ in pairs])
    b = clf.classify([c for _, c in pairs])
    agree = [x.label == y.label for x, y in zip(a, b)]
    pdiff = [max(abs(x.probabilities[k] - y.probabilities[k]) for k in s.class_names)
             for x, y in zip(a, b)]
    res.update({"fullres_pairs": len(pairs), "fullres_vs_224_agreement": float(np.mean(agree)),
                "fullres_vs_224_median_max_prob_diff": float(np.median(pdiff))})
    # Reduced-size against full-size decoding of the same scans, for each CPU variant; and the
    # int8 variant's parity record, measured at export on the validation and test splits.
    from trainer.decoding import decoding_parity
    from xray_infer.model import variant_path
    variants = [p for p in ("float32", "int8") if variant_path(clf.model_path, p).exists()]
    decoding = {p: decoding_parity(full, args.model, precision=p) for p in variants}
    table = dict(res)
    for p, r in decoding.items():
        table[f"reduced vs full decoding, {p}: label agreement (n={r['n']})"] = r["agreement"]
        table[f"reduced vs full decoding, {p}: scope decisions agree"] = r["scope_agreement"]
        table[f"reduced vs full decoding, {p}: median / max probability diff"] = \
            f"{r['median_abs_probability_diff']:.4f} / {r['max_abs_probability_diff']:.4f}"
    res["reduced_decoding"] = decoding
    if "int8" in variants:
        from xray_infer.model import load_model
        res["int8_parity"] = load_model(args.model, providers=["CPUExecutionProvider"],
                                        precision="int8")[1].metrics["int8_parity"]
        table.update({f"int8 vs float32, {k}: label agreement": v["agreement"]
                      for k, v in res["int8_parity"].items() if isinstance(v, dict)})
    print_table(f"parity on {len(records)} test images and {len(pairs)} full-resolution/224 pairs",
                ["check", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else v]
                                     for k, v in table.items()])
    save(args.json, "parity", {"model_version": s.model_version, "results": res})
    return res
