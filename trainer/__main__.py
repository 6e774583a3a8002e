"""Command line of the trainer.

    python -m trainer experiments --out runs/grid --device cuda --workers 4
    python -m trainer report --grid runs/grid --out docs
    python -m trainer export --select runs/grid --out xray_infer/models/default.onnx
    python -m trainer quantize --model xray_infer/models/default.onnx   # its int8 variant
    python -m trainer decoding --model xray_infer/models/default.onnx   # reduced-decoding parity
    python -m trainer train --out runs/one --epochs 10 --size 128     # a single run
    python -m trainer v4 cv --out runs/v4       # model v4's protocol (trainer/protocol.py)
"""
import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from .arrays import load_arrays
from .dataset import DATA_ROOT, VAL_SPLITS, fullres_scans, load_splits
from .train import RunConfig, train_run


def _device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def cmd_train(a):
    net = RunConfig().net
    if a.widths:
        net = replace(net, widths=tuple(a.widths))
    cfg = RunConfig(name=a.name, net=replace(net, input_size=a.size), epochs=a.epochs, seed=a.seed,
                    batch_size=a.batch_size, val_split=a.val_split)
    torch.set_num_threads(a.threads)
    data = load_arrays(load_splits(a.data, scheme=cfg.val_split), a.size, cfg.mean, cfg.std,
                       a.limit)
    result, state = train_run(cfg, data, _device(a.device))
    from . import runs
    print(f"wrote {runs.save(a.out, cfg, result, state)}", file=sys.stderr)
    print(json.dumps({k: result[k] for k in ("val", "test") if k in result}, indent=1))


def cmd_experiments(a):
    from .experiments import run_grid
    run_grid(a.out, seeds=tuple(a.seeds), workers=a.workers, device=_device(a.device),
             epochs=a.epochs, size=a.size, phases=tuple(a.phases),
             keep_checkpoints=a.keep_checkpoints, limit=a.limit, more_hyper=a.more_hyper,
             convs_per_block=a.convs_per_block, val_split=a.val_split,
             log=lambda m: print(m, flush=True))


def cmd_transfer(a):
    from .experiments import run_transfer
    run_transfer(a.out, a.group, seeds=tuple(a.seeds), device=_device(a.device), limit=a.limit,
                 log=lambda m: print(m, flush=True), grid=a.grid,
                 names=a.runs or ())


def cmd_v4(a):
    from . import protocol
    from .selection import RequestError
    log = lambda m: print(m, flush=True)  # noqa: E731
    device, kw = _device(a.device), dict(data_root=a.data, limit=a.limit, log=log)
    table = protocol.cv_table(a.out)
    if a.step == "cv":
        protocol.run_cv(a.out, recipes=a.recipes, folds=a.folds, device=device, **kw)
        protocol.print_table(protocol.cv_table(a.out), log)
    elif a.step == "table":
        protocol.print_table(table, log)
    elif a.step == "report":
        from .protocol_report import write
        write(a.out, a.model, a.data, a.json, a.md, "python -m trainer v4 report", a.limit,
              log=log)
    else:
        recipe = a.recipe or (table["choice"] or {}).get("recipe")
        if recipe is None or (not a.recipe and len(table["folds"]) < protocol.FOLDS):
            raise RequestError(f"the cross-validation under {a.out} has finished folds "
                               f"{table['folds']} of {protocol.FOLDS}: finish it (v4 cv) or "
                               f"name --recipe")
        if a.step == "soup":
            protocol.run_soup(a.out, recipe, members=a.members or protocol.SOUP_MEMBERS,
                              device=device, **kw)
        elif a.step == "student":
            protocol.run_student(a.out, recipe, device=device, **kw)
        else:
            protocol.compare(a.out, recipe, candidate=a.candidate, **kw)


def cmd_export(a):
    from .export import export_runs
    if a.run:
        paths, selection = [Path(p) for p in a.run], "explicit"
    else:
        from .selection import candidates
        ranked = candidates(a.select, a.ensemble, a.data, a.limit)
        for sc, members in ranked[:8]:
            print(f"  candidate: val macro-F1 {sc:.4f}: {' + '.join(p.stem for p in members)}")
        paths = ranked[0][1]
        selection = (f"best validation macro-F1 among single runs and top-{a.ensemble} "
                     f"ensembles")
    spec, parity, int8 = export_runs(paths, a.out, a.data, version=a.version, limit=a.limit,
                               fp16=not a.no_fp16, int8=not a.no_int8,
                               checkpoint=a.save_checkpoint,
                               selection=selection,
                               command="python -m trainer " + " ".join(sys.argv[1:]))
    m = spec.metrics
    if parity:
        print(f"wrote the float16 variant: test agreement {parity['agreement']:.4f}, accuracy "
              f"{parity['accuracy_float16']:.4f} (float32 {parity['accuracy_float32']:.4f})")
    if int8:
        print("wrote the int8 variant:")
        _print_int8(int8)
    print(f"wrote {a.out}: {len(m['temperatures'])} member(s), temperatures "
          f"{', '.join(f'{t:.3f}' for t in m['temperatures'])}, "
          f"ORT/torch parity {m['export_parity_max_abs_diff']:.1e}")
    for split in ("val", "test"):
        s = m[split]
        print(f"  {split}: accuracy {s['accuracy']:.4f} macro-F1 {s['macro_f1']:.4f} "
              f"normal-vs-pneumonia accuracy {s['binary_accuracy']:.4f} AUC {s['binary_auc']:.4f}")


def _model_splits(a):
    """(spec, {train, val, test} records) of the exported model ``a.model``: its validation
    split; with ``--limit``, the records its arrays hold (``_model_arrays``)."""
    from xray_infer.model import load_model

    from .dataset import limit_per_class
    spec = load_model(a.model, providers=["CPUExecutionProvider"], precision="float32")[1]
    splits = load_splits(a.data, scheme=spec.validation_split)
    if a.limit:
        splits = {k: limit_per_class(v, a.limit) for k, v in splits.items()}
    return spec, splits


def _model_arrays(a, model_splits=None):
    """{train, val, test} arrays for the exported model ``a.model``: its validation split, at
    its input size and normalisation."""
    spec, splits = model_splits or _model_splits(a)
    return load_arrays(splits, spec.input_size, spec.mean, spec.std, a.limit)


def cmd_scope(a):
    from .export import add_scope_gate
    spec = add_scope_gate(a.model, _model_arrays(a))
    s = spec.scope
    print(f"wrote {a.model}: scope threshold {s['threshold']:.1f} ({s['threshold_rule']}; "
          f"{s['fitted_on']}), graph parity {s['parity_max_rel_diff']:.1e}")


def cmd_adult_head(a):
    from .export import add_adult_head
    model_splits = _model_splits(a)
    spec = add_adult_head(a.model, _model_arrays(a, model_splits),
                          [r.patient for r in model_splits[1]["train"]], a.data)
    h, dev = spec.adult_head, spec.adult_head["development"]
    held = dev["held_out_adults_refused"]
    print(f"wrote {a.model}: adult head threshold {h['threshold']:.3f} ({h['threshold_rule']}; "
          f"C {h['regularisation']['C']:.0e}), graph parity {h['parity_max_abs_diff']:.1e}")
    print("  held-out adults refused: " + ", ".join(
        f"{k} {v['share']:.3f} of {v['n']}" for k, v in held.items() if v["n"]))
    alone = dev["peds_other_kept_leave_one_out"]
    print("  peds-other-dev kept (each by a head fitted without it): " + ", ".join(
        f"ages {k} {v['share']:.3f} of {v['n']}" for k, v in alone.items() if v["n"]))
    for key in ("test_kept", "fullres_kept"):
        if key in dev:
            print(f"  {key.replace('_', ' ')}: {dev[key]['share']:.4f} of {dev[key]['n']}")


def cmd_quantize(a):
    from .quantize import export_int8
    try:
        _print_int8(export_int8(a.model, _model_arrays(a)))
    except (ValueError, RuntimeError) as e:
        sys.exit(f"python -m trainer quantize: {e}")


def _print_int8(parity):
    for split in ("val", "test"):
        r = parity[split]
        print(f"  int8 {split}: agreement {r['agreement']:.4f}, scope agreement "
              f"{r['scope_agreement']:.4f}, accuracy {r['accuracy_int8']:.4f} (float32 "
              f"{r['accuracy_float32']:.4f}), macro-F1 {r['macro_f1_int8']:.4f} (float32 "
              f"{r['macro_f1_float32']:.4f})")


def cmd_decoding(a):
    from .decoding import MIN_DECODING_AGREEMENT, record_parity
    paths = fullres_scans(a.scans)
    if not paths:
        sys.exit(f"python -m trainer decoding: no JPEG scans under {a.scans}")
    for precision, r in record_parity(a.model, paths).items():
        print(f"  {precision}: {r['n']} scans (scaled by {r['scaled_by']}), agreement "
              f"{r['agreement']:.4f} (needs {MIN_DECODING_AGREEMENT}), scope agreement "
              f"{r['scope_agreement']:.4f}, probability difference median "
              f"{r['median_abs_probability_diff']:.4f}, max {r['max_abs_probability_diff']:.4f}")


def cmd_report(a):
    from .report import write_report
    path = write_report(a.grid, a.out, model=a.model, notes=a.notes, archive=a.archive)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default=DATA_ROOT, help="dataset root (holds chest_xray/)")
    common.add_argument("--limit", type=int, default=0,
                        help="use only the first N images of each class per split (smoke runs)")
    split = argparse.ArgumentParser(add_help=False)  # for the commands that train
    split.add_argument("--val-split", choices=list(VAL_SPLITS), default=RunConfig.val_split,
                       help="which training patients validate (see trainer/dataset.py)")

    t = sub.add_parser("train", parents=[common, split], help="one run from the base config")
    t.add_argument("--out", required=True)
    t.add_argument("--name", default="base")
    t.add_argument("--epochs", type=int, default=RunConfig.epochs)
    t.add_argument("--size", type=int, default=RunConfig().net.input_size)
    t.add_argument("--widths", type=int, nargs="+")
    t.add_argument("--batch-size", type=int, default=RunConfig.batch_size)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="auto")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("experiments", parents=[common, split],
                       help="ablation grid (phases 1-3), resumable")
    e.add_argument("--out", required=True)
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    e.add_argument("--workers", type=int, default=1)
    e.add_argument("--device", default="auto")
    e.add_argument("--epochs", type=int, help="override every run's epochs (quick grids)")
    e.add_argument("--size", type=int, help="override the input size (quick grids)")
    e.add_argument("--convs-per-block", type=int,
                   help="override the convolutions per block (cheaper grids on a CPU)")
    e.add_argument("--phases", type=int, nargs="+", default=[1, 2, 3])
    e.add_argument("--keep-checkpoints", type=int, metavar="K",
                   help="keep .pt files only for the K best configurations on validation")
    e.add_argument("--more-hyper", action="store_true",
                   help="phase 3 also tries doubled widths and a larger input size")
    e.set_defaults(fn=cmd_experiments)

    tr = sub.add_parser("transfer", parents=[common],
                        help="ImageNet-initialised EfficientNet-Lite0 runs (trainer.experiments."
                             "TRANSFER), one at a time, resumable")
    tr.add_argument("--out", required=True)
    tr.add_argument("--group", choices=("candidates", "comparisons"), default="candidates")
    tr.add_argument("--grid", choices=("v2", "v3"), default="v2",
                    help="v2: the runs behind model 2.0.0; v3: those behind 3.0.0")
    tr.add_argument("--runs", nargs="+", metavar="NAME",
                    help="only these configurations of the group (e.g. the chosen recipe's "
                         "further seeds)")
    tr.add_argument("--seeds", type=int, nargs="+", default=[0])
    tr.add_argument("--device", default="auto")
    tr.set_defaults(fn=cmd_transfer)

    v = sub.add_parser("v4", parents=[common],
                       help="model v4's protocol (docs/experiments-notes.md): cross-validation "
                            "of the recipes, the table and the rule's choice, the soup of the "
                            "chosen recipe, its holdout comparison; resumable")
    v.add_argument("step", choices=("cv", "table", "soup", "student", "compare", "report"))
    v.add_argument("--candidate", choices=("soup", "student"), default="soup",
                   help="compare: which of the recipe's averages (default: %(default)s)")
    v.add_argument("--out", default="runs/v4", help="the protocol's folder (default: %(default)s)")
    v.add_argument("--recipes", nargs="+", metavar="NAME", help="cv: only these recipes")
    v.add_argument("--folds", type=int, nargs="+", metavar="K", help="cv: only these folds")
    v.add_argument("--recipe", help="soup/compare: this recipe instead of the rule's choice "
                                    "(smoke runs)")
    v.add_argument("--members", type=int,
                   help="soup: fine-tunes averaged (default: the protocol's 5; fewer: smoke runs)")
    v.add_argument("--model", default="xray_infer/models/default.onnx",
                   help="report: the bundled model (default: %(default)s)")
    v.add_argument("--json", default="docs/bench/protocol-v4.json", help="report: its record")
    v.add_argument("--md", default="docs/protocol-v4.md", help="report: its page")
    v.add_argument("--device", default="auto")
    v.set_defaults(fn=cmd_v4)

    x = sub.add_parser("export", parents=[common], help="export a run to ONNX with metadata")
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--select", nargs="+", metavar="DIR",
                     help="experiment folders: export the validation-best candidate")
    src.add_argument("--run", nargs="+", help="runs' .json files (.pt beside); several = ensemble")
    x.add_argument("--ensemble", type=int, default=3,
                   help="with --select: also consider ensembles of this many runs")
    x.add_argument("--out", required=True)
    x.add_argument("--version", default="unversioned",
                   help="the model's version, recorded in its metadata (e.g. 2.0.0)")
    x.add_argument("--no-fp16", action="store_true",
                   help="do not write the float16 variant (name.fp16.onnx) used on CUDA")
    x.add_argument("--no-int8", action="store_true",
                   help="do not write the int8 variant (name.int8.onnx) used on CPUs with int8 "
                        "dot products")
    x.add_argument("--save-checkpoint", metavar="PT",
                   help="also save the torch weights + config (for parity benchmarks)")
    x.set_defaults(fn=cmd_export)

    sc = sub.add_parser("scope", parents=[common],
                        help="fit the scope gate of an exported model that has none, in place "
                             "(export fits it for new models)")
    sc.add_argument("--model", required=True)
    sc.set_defaults(fn=cmd_scope)

    ah = sub.add_parser("adult-head", parents=[common],
                        help="fit the adult head of an exported model that has none, in place, "
                             "with its variants (export fits it for new models)")
    ah.add_argument("--model", required=True)
    ah.set_defaults(fn=cmd_adult_head)

    q = sub.add_parser("quantize", parents=[common],
                       help="write the int8 variant of an exported model (export writes it for "
                            "new models), gated on validation agreement")
    q.add_argument("--model", required=True)
    q.set_defaults(fn=cmd_quantize)

    d = sub.add_parser("decoding", parents=[common],
                       help="measure reduced-size JPEG decoding against full-size decoding on "
                            "full-resolution scans and record it in the model's metadata")
    d.add_argument("--model", required=True)
    d.add_argument("--scans", default=str(Path(DATA_ROOT) / "fullres"),
                   help="folder of full-resolution JPEG scans (default: the dataset's fullres/)")
    d.set_defaults(fn=cmd_decoding)

    r = sub.add_parser("report", help="docs/experiments.md and plots from an experiments folder")
    r.add_argument("--grid", nargs="*", default=[], help="experiment folders")
    r.add_argument("--out", default="docs")
    r.add_argument("--model", default="xray_infer/models/default.onnx")
    r.add_argument("--notes", help="a Markdown file appended as the reading of the results")
    r.add_argument("--archive", help="an earlier experiments.json: its grids whose folders are "
                                     "not given are reported from it")
    r.set_defaults(fn=cmd_report)
    a = p.parse_args(argv)
    from .selection import RequestError
    try:
        a.fn(a)
    except RequestError as e:
        sys.exit(f"python -m trainer {a.cmd}: {e}")


if __name__ == "__main__":
    main()
