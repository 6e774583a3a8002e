"""Model inputs as arrays: images decoded and preprocessed once, through the library's own batch
path, and cached on disk (the records they come from are indexed in ``dataset.py``)."""
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xray_infer.batch import preprocess_batch
from xray_infer.spec import ModelSpec

from .classes import CLASS_NAMES

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"


def preprocess_records(records, size, mean, std, threads=None):
    """float32 ``(N, 1, size, size)`` for the records' images and int64 labels.

    Exactly what the library feeds a model with this input size and normalisation; a training
    image the library would refuse is an error here too.
    """
    spec = ModelSpec(class_names=CLASS_NAMES, input_size=size, mean=mean, std=std)
    with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
        x, errors, *_ = preprocess_batch([r.path for r in records], spec, executor=pool)
    bad = [f"{r.path}: {e.reason}" for r, e in zip(records, errors) if e is not None]
    if bad:
        raise ValueError(f"{len(bad)} dataset image(s) cannot be used: " + "; ".join(bad[:5]))
    return x, np.array([r.label for r in records], np.int64)


def load_arrays(splits, size, mean, std, limit=0):
    """{split: (x, labels)} for {split: records}; ``limit`` keeps the first N images of each class
    (smoke runs, which skip the disk cache)."""
    if limit:
        from .dataset import limit_per_class
        return {k: preprocess_records(limit_per_class(v, limit), size, mean, std)
                for k, v in splits.items()}
    return {k: cached_arrays(v, size, mean, std) for k, v in splits.items()}


def cached_arrays(records, size, mean, std, cache_dir=CACHE_DIR):
    """``preprocess_records`` memoised on disk, keyed by the file list and parameters."""
    key = hashlib.sha256(repr(([r.path for r in records], size, mean, std)).encode())
    path = Path(cache_dir) / f"x_{size}_{key.hexdigest()[:16]}.npy"
    labels = np.array([r.label for r in records], np.int64)
    if path.exists():
        return np.load(path, mmap_mode="r"), labels
    x, labels = preprocess_records(records, size, mean, std)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, x)
    os.replace(tmp, path)
    return x, labels
