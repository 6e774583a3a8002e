"""Preprocessing, decoding, inference and end-to-end throughput, each against baselines
measured in the same run."""
import copy
import os
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from xray_infer import DEFAULT_MODEL, Classifier
from xray_infer.spec import DEFAULT_BATCH_SIZE
from xray_infer.decode import decode_bytes, read_image
from xray_infer.model import load_model, variant_path
from xray_infer.preprocess import preprocess_into, reference_preprocess

from .common import fullres_paths, median, percentile, print_table, save, timeit


def _spec(model=None):
    return load_model(model, providers=["CPUExecutionProvider"])[1]


def preprocess(args):
    """Resize + normalise of decoded full-resolution scans: kernel vs OpenCV vs Pillow."""
    from PIL import Image
    spec = _spec(args.model)
    size, mean, std = spec.input_size, spec.mean, spec.std
    images = [read_image(p).pixels for p in fullres_paths(args.limit)]
    def kernel(img):  # allocates its output like the baselines do
        return preprocess_into(img, np.empty((size, size), np.float32), mean=mean, std=std)

    def opencv(img):
        r = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return (r.astype(np.float32) / 255.0 - mean) / std

    def pillow(img):
        r = Image.fromarray(img).resize((size, size), Image.Resampling.BOX)
        return (np.asarray(r, np.float32) / 255.0 - mean) / std

    methods = {"cython kernel": kernel, "opencv INTER_AREA + numpy": opencv,
               "pillow BOX + numpy": pillow}
    refs = [reference_preprocess(im, size=size, mean=mean, std=std) for im in images]
    parity = {name: max(float(np.abs(fn(im) - ref).max()) for im, ref in zip(images, refs))
              for name, fn in methods.items()}
    rows, results = [], {}
    cv2_threads = cv2.getNumThreads()
    for name, fn in methods.items():
        cv2.setNumThreads(1)  # single-threaded; with all cores, one image per pool thread
        single = timeit(lambda: [fn(im) for im in images], repeat=args.repeat)
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            multi = timeit(lambda: list(pool.map(fn, images)), repeat=args.repeat)
        ms = 1e3 * median(single) / len(images)
        results[name] = {"ms_per_scan_1_thread": ms,
                         "scans_per_s_all_cores": len(images) / median(multi),
                         "max_abs_diff_vs_reference": parity[name]}
    cv2.setNumThreads(cv2_threads)
    base = results["opencv INTER_AREA + numpy"]["ms_per_scan_1_thread"]
    for name, r in results.items():
        r["speedup_vs_opencv_1_thread"] = base / r["ms_per_scan_1_thread"]
        rows.append([name, f"{r['ms_per_scan_1_thread']:.3f}", f"{r['speedup_vs_opencv_1_thread']:.2f}x",
                     f"{r['scans_per_s_all_cores']:.0f}", f"{r['max_abs_diff_vs_reference']:.1e}"])
    shapes = np.array([im.shape for im in images])
    print_table(f"preprocess: {len(images)} decoded full-resolution scans "
                f"(median {int(np.median(shapes[:, 1]))}x{int(np.median(shapes[:, 0]))} px) -> "
                f"{size}x{size}, median of {args.repeat} passes",
                ["method", "ms/scan 1 thread", "vs opencv", f"scans/s {os.cpu_count()} threads",
                 "max |diff| vs reference"], rows)
    save(args.json, "preprocess", {"n": len(images), "size": size, "results": results})
    return results


def decode(args):
    """JPEG decoding of full-resolution scans, full size and libjpeg's reduced sizes."""
    from PIL import Image
    import io
    blobs = [open(p, "rb").read() for p in fullres_paths(args.limit)]
    flags = {"opencv ANYDEPTH|ANYCOLOR (library path)": cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR,
             "opencv IMREAD_GRAYSCALE": cv2.IMREAD_GRAYSCALE,
             "opencv IMREAD_REDUCED_GRAYSCALE_2": cv2.IMREAD_REDUCED_GRAYSCALE_2,
             "opencv IMREAD_REDUCED_GRAYSCALE_4": cv2.IMREAD_REDUCED_GRAYSCALE_4}
    methods = {name: (lambda b, f=f: cv2.imdecode(np.frombuffer(b, np.uint8), f))
               for name, f in flags.items()}

    def pil(b):
        im = Image.open(io.BytesIO(b))
        im.draft("L", (im.width // 4, im.height // 4))
        return np.asarray(im.convert("L"))
    methods["pillow draft 1/4 (DCT scaling)"] = pil
    size = _spec(args.model).input_size
    methods["library decode_bytes, full size"] = lambda b: decode_bytes(b, "scan")
    methods[f"library decode_bytes, reduced rule (model input {size})"] = \
        lambda b: decode_bytes(b, "scan", size)
    methods["pillow full"] = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("L"))
    rows, results = [], {}
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    for name, fn in methods.items():
        single = timeit(lambda: [fn(b) for b in blobs], repeat=args.repeat)
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            multi = timeit(lambda: list(pool.map(fn, blobs)), repeat=args.repeat)
        results[name] = {"ms_per_scan_1_thread": 1e3 * median(single) / len(blobs),
                         "scans_per_s_all_cores": len(blobs) / median(multi)}
        rows.append([name, f"{results[name]['ms_per_scan_1_thread']:.2f}",
                     f"{results[name]['scans_per_s_all_cores']:.0f}"])
    cv2.setNumThreads(cv2_threads)
    mb = sum(map(len, blobs)) / 1e6
    print_table(f"decode: {len(blobs)} full-resolution JPEGs ({mb:.1f} MB), from memory",
                ["decoder", "ms/scan 1 thread", f"scans/s {os.cpu_count()} threads"], rows)
    save(args.json, "decode", {"n": len(blobs), "results": results})
    return results


def _torch_model(args, device):
    import torch

    from trainer.export import load_checkpoint
    # float32 means float32 on both sides: torch's cuDNN convolutions default to TF32, as ONNX
    # Runtime's do unless the library turns it off (xray_infer.providers.strict_float32).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model, _ = load_checkpoint(args.checkpoint)
    return model.to(device), torch


def _timing(seconds, bs):
    return {"p50_ms": 1e3 * median(seconds), "p95_ms": 1e3 * percentile(seconds, 95),
            "img_per_s": bs / median(seconds)}


def inference(args):
    """ONNX Runtime vs PyTorch eager, per batch size: latency p50/p95 and throughput.

    The headline pair is float32 on both sides (the same arithmetic). Also timed, same run:
    on CUDA the session fed and read through NumPy instead of bound on the device, the float16
    variant where it exists, on the CPU the int8 variant, and on CUDA torch in float16,
    channels-last.
    """
    cuda = args.device == "cuda"
    threads = None if cuda else os.cpu_count()  # one call on every core, as torch's runs
    clf = Classifier(args.model, providers=args.providers, precision="float32", threads=threads)
    model, torch = _torch_model(args, args.device)
    size, s = clf.spec.input_size, clf.spec
    half = (Classifier(args.model, providers=args.providers, precision="float16")
            if variant_path(clf.model_path, "float16").exists() else None)
    int8, int8_1 = ((Classifier(args.model, providers=args.providers, precision="int8",
                                threads=t) for t in (threads, 1))
                    if variant_path(clf.model_path, "int8").exists() and not cuda
                    else (None, None))
    # What the classifier's CPU path runs: each core's worker thread its own one-thread call.
    side_by_side = ThreadPoolExecutor(os.cpu_count())
    if cuda:
        model_half = copy.deepcopy(model).half().to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    rows, results = [], {}
    for bs in args.batch_sizes:
        x = rng.standard_normal((bs, 1, size, size)).astype(np.float32)
        iters = args.repeat * max(1, min(10, 64 // bs))  # bounded by --repeat
        xt = torch.from_numpy(x).to(args.device)

        def torch_run(net, inp):
            with torch.inference_mode():
                out = net(inp)
            if cuda:
                torch.cuda.synchronize()
            return out
        variants = {"onnxruntime": lambda: clf.predict(x),
                    "torch_eager": lambda: torch_run(model, xt)}
        if clf.providers[0] == "CUDAExecutionProvider":
            variants["onnxruntime_numpy_fed"] = lambda: clf.session.run(
                [s.output_name], {s.input_name: x})
        if half is not None:
            variants["onnxruntime_float16"] = lambda: half.predict(x)
        if int8 is not None:
            variants["onnxruntime_int8"] = lambda: int8.predict(x)
            variants["onnxruntime_int8_1_thread_per_core"] = lambda: list(side_by_side.map(
                lambda _: int8_1.predict(x), range(os.cpu_count())))
        if cuda:
            xh = xt.half().to(memory_format=torch.channels_last)
            variants["torch_float16_channels_last"] = lambda: torch_run(model_half, xh)
        r = {name: _timing(timeit(fn, repeat=iters, warmup=2),
                           bs * (os.cpu_count() if name.endswith("per_core") else 1))
             for name, fn in variants.items()}
        r["speedup"] = r["onnxruntime"]["img_per_s"] / r["torch_eager"]["img_per_s"]
        results[bs] = r
        rows.append([bs] + [f"{r[n]['img_per_s']:.0f} ({r[n]['p50_ms']:.1f}/"
                            f"{r[n]['p95_ms']:.1f})" for n in variants] + [f"{r['speedup']:.2f}x"])
    print_table(f"inference: {size}x{size} input, ORT {clf.providers[0]} vs torch on "
                f"{args.device} ({torch.get_num_threads()} torch threads); img/s (p50/p95 ms)",
                ["batch", *variants, "ORT/torch"], rows)
    side_by_side.shutdown()
    save(args.json, "inference", {"providers": clf.providers, "device": args.device,
                                  "model_version": clf.spec.model_version, "results": results})
    return results


#: The end-to-end paths timed against each other: (name, precision, decode). The first is the
#: library's path before the int8 variant and reduced decoding; the last is its default.
E2E_PATHS = (("float32, full-size decoding", "float32", "full"),
             ("int8, full-size decoding", "int8", "full"),
             ("float32, reduced decoding", "float32", "reduced"),
             ("default (auto precision, reduced decoding)", "auto", "reduced"))


HANDOFF = "default, 2.1.0 pipeline (decoding threads hand batches to ONNX Runtime on all cores)"


def _handoff(clf, spin):
    """``clf`` scoring as the library's CPU path did in 2.1.0: worker threads decode and
    preprocess batches of 32, and one thread runs each batch through ONNX Runtime on all
    cores, its threads spinning between runs (``spin``) or sleeping. Since then each worker
    scores batches of its own, one ONNX Runtime thread per call."""
    clf.session = load_model(clf.model_path, providers=clf.providers, spin=spin,
                             threads=os.cpu_count(), precision=clf.variant.precision)[0]
    clf._on_cpu, clf.batch_size = False, DEFAULT_BATCH_SIZE  # the hand-off path
    return clf


def e2e(args):
    """Scoring a folder of full-resolution scans, each path of the library (``E2E_PATHS``, and
    the default through the earlier pipelines) against the bound set by JPEG decoding alone at full
    size on all cores, a typical per-image loop and, where given, a baseline model; then the
    latency of one ``classify([path])``, what the DICOM node sees per instance."""
    from PIL import Image
    scans = fullres_paths(args.limit)
    paths = scans * args.cycle  # files read again come from the page cache, as on later passes
    clfs = {name: Classifier(args.model, providers=args.providers, batch_size=args.batch_size,
                             precision=precision, decode=decode)
            for name, precision, decode in E2E_PATHS
            if precision != "int8" or variant_path(args.model or DEFAULT_MODEL, "int8").exists()}
    default = clfs[E2E_PATHS[-1][0]]
    if default.providers[0] == "CPUExecutionProvider":
        for name, spin in ((HANDOFF, False),
                           ("same, ONNX Runtime threads spin-waiting (2.0.0)", True)):
            clfs[name] = _handoff(Classifier(args.model, providers=args.providers), spin)
    for path in args.baseline_model or ():  # as "float32/int8, full-size decoding" above
        base = load_model(path, providers=["CPUExecutionProvider"], precision="float32")[1]
        for precision in ("float32", "int8"):
            if precision == "int8" and not variant_path(path, "int8").exists():
                continue
            clfs[f"model v{base.model_version} path ({precision}, full-size decoding)"] = \
                Classifier(path, providers=args.providers, scope=bool(base.scope_output),
                           batch_size=args.batch_size, precision=precision, decode="full")
    model, torch = _torch_model(args, args.device)
    spec = default.spec
    for clf in clfs.values():
        clf.classify(paths[:8])  # warm-up: session, thread pools

    def naive():
        out = []
        for p in scans:
            im = Image.open(p).convert("L").resize((spec.input_size, spec.input_size),
                                                   Image.Resampling.BILINEAR)
            x = (np.asarray(im, np.float32) / 255.0 - spec.mean) / spec.std
            with torch.no_grad():
                logits = model(torch.from_numpy(x)[None, None].to(args.device))
            out.append(int(logits.argmax()))
        return out

    def decode_only():
        def one(p):
            with open(p, "rb") as f:
                return cv2.imdecode(np.frombuffer(f.read(), np.uint8),
                                    cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            return list(pool.map(one, paths))

    # Interleaved, so that drift in the machine's speed hits every path alike. The bound is
    # timed at the start and the end of each round, each after an untimed pass: on this VM the
    # first decoding pass after other work ran up to 2x slower than the next.
    # Each pass also records how busy it kept the cores: the process's CPU time over the
    # cores' wall time (spin-waiting counts as busy; idle cores do not).
    times, busy = {name: [] for name in clfs}, {name: [] for name in clfs}
    t_dec = []
    for _ in range(args.repeat):
        t_dec += timeit(decode_only, repeat=1, warmup=1)
        for name, clf in clfs.items():
            cpu = time.process_time()
            times[name] += timeit(lambda: clf.classify(paths), repeat=1, warmup=0)
            busy[name].append((time.process_time() - cpu) / (times[name][-1] * os.cpu_count()))
        t_dec += timeit(decode_only, repeat=1, warmup=1)
    t_naive = timeit(naive, repeat=max(1, args.repeat // 2))
    n = len(paths)
    bound = n / median(t_dec)
    paths_out = {name: {"scans_per_s": n / median(t), "fraction_of_decode_bound":
                        n / median(t) / bound, "variant": clfs[name].variant.precision,
                        "decode": clfs[name].decode, "cores_busy": median(busy[name])}
                 for name, t in times.items()}
    results = {"paths": paths_out, "decode_bound": bound,
               "naive_loop": len(scans) / median(t_naive), "default": E2E_PATHS[-1][0]}
    results["fraction_of_decode_bound"] = paths_out[E2E_PATHS[-1][0]]["fraction_of_decode_bound"]
    results["speedup_vs_naive"] = paths_out[E2E_PATHS[-1][0]]["scans_per_s"] / results["naive_loop"]
    # Single-scan latency: one classify([path]) at a time, as the DICOM node calls it.
    latency = {}
    for name in (E2E_PATHS[0][0], E2E_PATHS[-1][0], HANDOFF):
        if name not in clfs:
            continue
        clf = clfs[name]
        one = [timeit(lambda p=p: clf.classify([p]), repeat=1, warmup=0)[0]
               for p in scans[:max(20, min(len(scans), 10 * args.repeat))]]
        latency[name] = {"p50_ms": 1e3 * median(one), "p95_ms": 1e3 * percentile(one, 95),
                         "n": len(one)}
    results["single_scan_latency"] = latency
    rows = [[name, f"{r['scans_per_s']:.1f}", f"{r['fraction_of_decode_bound']:.2f}",
             f"{100 * r['cores_busy']:.0f}%"] for name, r in paths_out.items()]
    rows += [["naive loop (Pillow + torch per image)", f"{results['naive_loop']:.1f}",
              f"{results['naive_loop'] / bound:.2f}", ""],
             ["decode only at full size (OpenCV, all cores): the bound", f"{bound:.1f}", "1.00",
              ""]]
    print_table(f"end to end: {len(scans)} full-resolution scans x {args.cycle}, model "
                f"{spec.model_version} ({spec.input_size}px), {os.cpu_count()} cores, providers "
                f"{default.providers[0]}, median of {args.repeat}",
                ["path", "scans/s", "of decode bound", "cores busy"], rows)
    print_table("single-scan latency, classify([path])", ["path", "p50 ms", "p95 ms"],
                [[k, f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}"] for k, v in latency.items()])
    save(args.json, "e2e", {"n": n, "scans": len(scans), "cycle": args.cycle,
                            "batch_size": default.batch_size, "repeat": args.repeat,
                            "model_version": spec.model_version, "results": results})
    return results
