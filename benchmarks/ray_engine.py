"""The Ray engine against the in-process engine, same inputs, same run."""
import os
import tempfile
import time
from pathlib import Path

from xray_infer import Classifier

from .common import fullres_paths, median, print_table, save


def ray_engine(args):
    """Scans/s through ``xray_infer.distributed`` on a local Ray (one worker per CPU) and
    through ``Classifier.classify``, over the full-resolution scans linked ``--cycle`` times
    under distinct names (default 10: 2,400 inputs). Ray's start-up (``ray.init``) and the fixed
    cost of a job (starting its workers, which load the model) are timed apart, the latter as
    the median time of a job over 8 inputs."""
    import ray

    from xray_infer import distributed
    scans = fullres_paths(args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(args.cycle):
            for i, scan in enumerate(scans):
                link = Path(tmp) / f"{k:03d}-{i:04d}{Path(scan).suffix}"
                link.symlink_to(scan)
                paths.append(str(link))
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        t_init = time.perf_counter() - t0
        workers, cpus = distributed.plan()
        clf = Classifier(providers=["CPUExecutionProvider"], batch_size=args.batch_size)
        clf.classify(paths[:8])

        def job(inputs):
            t = time.perf_counter()
            n = sum(1 for _ in distributed.iter_results(inputs, batch_size=args.batch_size))
            assert n == len(inputs)
            return time.perf_counter() - t
        t_local, t_ray, t_small = [], [], []
        for _ in range(args.repeat):  # interleaved, so drift hits both engines alike
            t = time.perf_counter()
            clf.classify(paths)
            t_local.append(time.perf_counter() - t)
            t_small.append(job(paths[:8]))
            t_ray.append(job(paths))
        ray.shutdown()
    n = len(paths)
    local, start = n / median(t_local), median(t_small)
    results = {"inputs": n, "workers": workers, "cpus_per_worker": cpus,
               "ray_init_s": t_init, "job_start_s": start, "in_process": local,
               "ray_whole_job": n / median(t_ray),
               "ray_after_start": n / (median(t_ray) - start)}
    results["ratio_whole_job"] = results["ray_whole_job"] / local
    results["ratio_after_start"] = results["ray_after_start"] / local
    print_table(f"Ray engine vs in-process: {n} full-resolution inputs ({len(scans)} scans x "
                f"{args.cycle}), {os.cpu_count()} cores, {workers} Ray workers of {cpus:g} CPU, "
                f"median of {args.repeat}",
                ["engine", "scans/s", "vs in-process"],
                [["in-process Classifier.classify", f"{local:.1f}", "1.00"],
                 ["Ray, whole job", f"{results['ray_whole_job']:.1f}",
                  f"{results['ratio_whole_job']:.2f}"],
                 ["Ray, after the job's start", f"{results['ray_after_start']:.1f}",
                  f"{results['ratio_after_start']:.2f}"]])
    print(f"ray.init: {t_init:.1f} s; fixed cost of a job (workers start, load the model): "
          f"{start:.1f} s")
    save(args.json, "ray", {"n": n, "scans": len(scans), "cycle": args.cycle,
                            "batch_size": args.batch_size, "results": results})
    return results
