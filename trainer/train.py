"""One training run: seeded, validation-selected checkpoint, test evaluated once at the end."""
import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .classes import NUM_CLASSES

from .metrics import softmax, summarize
from .model import NetConfig, build, net_from_dict


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run besides the data."""
    name: str = "base"
    net: NetConfig = field(default_factory=NetConfig)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    augment: float = 1.0  # strength of the augmentation below; 0 turns it off
    class_weights: bool = True  # inverse-frequency loss weights against the 2:1:1 imbalance
    seed: int = 0
    # Intensity normalisation written into the model metadata. Fixed, not per-image, so a
    # scan's brightness means the same thing at training and inference.
    mean: float = 0.5
    std: float = 0.25
    # Which patients of the published train split validate (``dataset.patient_split``).
    val_split: str = "random"
    # Strength of ``acquisition_jitter`` (aspect ratio, resolution, sharpness, noise); 0 = off.
    shift_augment: float = 0.0
    # Strength of ``presentation_jitter`` (windowing, gamma, bit depth, JPEG re-encoding); 0 = off.
    present_augment: float = 0.0
    # Linear probe first: epochs training only the classifier on frozen features (batch-norm
    # statistics frozen too) at ``probe_lr``, before ``epochs`` of fine-tuning everything
    # (LP-FT, Kumar et al. 2022).
    probe_epochs: int = 0
    probe_lr: float = 3e-3
    # Keep the features' batch-norm statistics as initialised (pretrained ones) for the whole
    # run, so training and inference normalise alike; the affine parameters still train.
    freeze_bn_stats: bool = False
    # Weight of a Jensen-Shannon consistency term between the predictions on the training view
    # and on a re-export of it (``reexport``; AugMix, Hendrycks et al. 2020); 0 = off.
    consistency: float = 0.0
    # Keep the last epoch instead of the one with the best validation macro-F1 (the v4
    # protocol chooses no epoch on held-out data).
    keep_last: bool = False

    def to_dict(self):
        d = asdict(self)
        d["net"] = self.net.to_dict()
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["net"] = net_from_dict(d["net"])
        return cls(**d)


def _freeze_bn(module):
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        module.eval()


def channels_last(cfg):
    """Depthwise convolutions (EfficientNet) run about twice as fast channels-last on the CPU;
    the scratch CNNs keep the layout their recorded runs used."""
    from .pretrained import LiteConfig
    return isinstance(cfg.net, LiteConfig)


def seed_everything(seed, deterministic=True):
    """Seed everything; ``deterministic`` also restricts torch to deterministic kernels.

    On the CPU that costs little and makes runs bit-reproducible. On CUDA it is off by default:
    cuDNN's deterministic convolutions made these small nets several times slower, so GPU runs
    are seeded but may differ in the last digits between repetitions.
    """
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def augment(x, gen, mean, std, strength=1.0):
    """Radiograph-plausible jitter on a normalised batch: small affine, gamma, contrast, brightness.

    At strength 1: rotation up to 7 degrees, scale and shift up to 10% and 6%, gamma in
    [0.78, 1.28], contrast 15%, brightness 0.08. No horizontal flip: the heart sits on the
    patient's left and the film's side markers matter.
    """
    n, dev = x.shape[0], x.device
    u = lambda: (torch.rand(n, device=dev, generator=gen) * 2 - 1) * strength  # noqa: E731
    angle = u() * math.radians(7)
    scale = 1 + u() * 0.10
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u() * 0.06], 1),
                         torch.stack([sin, cos, u() * 0.06], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    v = (x * std + mean).clamp(0, 1)
    v = v ** torch.exp(u() * 0.25).view(n, 1, 1, 1)
    v = (v - 0.5) * (1 + u() * 0.15).view(n, 1, 1, 1) + 0.5 + (u() * 0.08).view(n, 1, 1, 1)
    return (v - mean) / std


def acquisition_jitter(x, gen, mean, std, strength=1.0):
    """What varies with the scanner and its post-processing rather than with disease, in both
    directions, on a normalised batch. At strength 1: the two axes scaled independently by
    x0.78 to x1.28 (the squash to a square puts the film's proportions into the thorax); half of
    the images shrunk by 1 to 2.5 and enlarged back (lost detail); unsharp masking from -0.6
    (blur) to +1.0 (edge enhancement); Gaussian noise up to 0.02 of the range.
    """
    n, dev, size = x.shape[0], x.device, x.shape[-1]
    rand = lambda *s: torch.rand(*s, device=dev, generator=gen)  # noqa: E731
    log_ar = math.log(1.28) * strength
    sx, sy = torch.exp((rand(n) * 2 - 1) * log_ar), torch.exp((rand(n) * 2 - 1) * log_ar)
    zero = torch.zeros(n, device=dev)
    theta = torch.stack([torch.stack([1 / sx, zero, zero], 1),
                         torch.stack([zero, 1 / sy, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x * std + mean, grid, mode="bilinear", padding_mode="border",
                      align_corners=False)
    factors = 1 + rand(n) * 1.5 * strength
    for i in torch.nonzero(rand(n) < 0.5).flatten().tolist():
        small = max(8, int(size / float(factors[i])))
        v[i:i + 1] = F.interpolate(F.interpolate(v[i:i + 1], size=small, mode="area"),
                                   size=size, mode="bilinear", align_corners=False)
    amount = (-0.6 + rand(n) * 1.6) * strength
    blurred = F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    v = v + amount.view(n, 1, 1, 1) * (v - blurred)
    v = v + torch.randn(v.shape, device=dev, generator=gen) * (rand(n) * 0.02 * strength).view(
        n, 1, 1, 1)
    return (v.clamp(0, 1) - mean) / std


def presentation_jitter(x, gen, mean, std, strength=1.0):
    """How an export presents the same film, on a normalised batch (each change on about half
    of the images, at strength 1): a window cut from the range (up to 6% of it off each end, then
    stretched back, as a percentile window does); gamma from 0.67 to 1.5; the values quantised to
    5 to 7 bits; JPEG re-encoding at quality 30 to 90. What ``python -m benchmarks robustness``
    varies, on the training images only.
    """
    import cv2
    n, dev = x.shape[0], x.device
    rand = lambda *s: torch.rand(*s, device=dev, generator=gen)  # noqa: E731
    on = lambda: (rand(n) < 0.5 * min(1.0, strength)).view(n, 1, 1, 1)  # noqa: E731
    v = (x * std + mean).clamp(0, 1)
    lo, hi = (rand(n) * 0.06 * strength).view(n, 1, 1, 1), \
        (1 - rand(n) * 0.06 * strength).view(n, 1, 1, 1)
    v = torch.where(on(), ((v - lo) / (hi - lo)).clamp(0, 1), v)
    gamma = torch.exp((rand(n) * 2 - 1) * math.log(1.5) * strength).view(n, 1, 1, 1)
    v = torch.where(on(), v.clamp_min(1e-6) ** gamma, v)
    levels = (2 ** (5 + torch.floor(rand(n) * 3))).view(n, 1, 1, 1) - 1
    v = torch.where(on(), torch.round(v * levels) / levels, v)
    quality = (30 + rand(n) * 60).round().int().tolist()
    recode = (rand(n) < 0.5 * min(1.0, strength)).tolist()
    if any(recode):
        img = (v * 255).round().to(torch.uint8).cpu().numpy()
        for i in (i for i in range(n) if recode[i]):
            ok, buf = cv2.imencode(".jpg", img[i, 0], [cv2.IMWRITE_JPEG_QUALITY, quality[i]])
            v[i, 0] = torch.from_numpy(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)).to(dev) / 255.0
    return (v - mean) / std


def reexport(x, gen, mean, std):
    """The consistency term's second view of a normalised batch: what an export may do to the
    same film (``presentation_jitter``), then unsharp masking of 0 to 1."""
    n = x.shape[0]
    v = presentation_jitter(x, gen, mean, std) * std + mean
    amount = torch.rand(n, device=x.device, generator=gen).view(n, 1, 1, 1)
    blurred = F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return ((v + amount * (v - blurred)).clamp(0, 1) - mean) / std


def js_divergence(logits_a, logits_b):
    """Mean Jensen-Shannon divergence between the softmax predictions of two views."""
    p, q = F.softmax(logits_a, 1), F.softmax(logits_b, 1)
    log_m = ((p + q) / 2).clamp_min(1e-7).log()
    return (F.kl_div(log_m, p, reduction="batchmean")
            + F.kl_div(log_m, q, reduction="batchmean")) / 2


@torch.no_grad()
def predict_logits(model, x, device, batch_size=256):
    """Logits for a float32 NCHW array (numpy or tensor), in eval mode, as float32 numpy."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[i:i + batch_size])).to(device)
        out.append(model(xb).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, NUM_CLASSES), np.float32)


def _loss(logits, labels, weights, smoothing):
    return float(F.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels),
                                 weight=weights, label_smoothing=smoothing))


def _end_epoch(cfg, model, phase, epoch, total_epochs, train_loss, train_accuracy, data, weights,
               device, history, best, best_state, t0, log):
    """Validate after an epoch, log it, and keep the state when validation improved."""
    xval, yval = data["val"]
    val_logits = predict_logits(model, xval, device)
    val = summarize(yval, softmax(val_logits),
                    _loss(val_logits, yval, weights, cfg.label_smoothing))
    row = {"epoch": epoch, "phase": phase, "train_loss": train_loss,
           "train_accuracy": train_accuracy, "val_loss": val["loss"],
           "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
           "seconds": time.perf_counter() - t0}
    history.append(row)
    log(f"[{cfg.name} s{cfg.seed}] {phase} epoch {epoch:3d}/{total_epochs} "
        f"loss {train_loss:.4f} acc {train_accuracy:.3f} | "
        f"val loss {val['loss']:.4f} acc {val['accuracy']:.3f} f1 {val['macro_f1']:.3f}")
    if (best is None or cfg.keep_last
            or (val["macro_f1"], -val["loss"]) > (best["macro_f1"], -best["loss"])):
        best = dict(val, epoch=epoch)
        best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return best, best_state


def train_run(cfg: RunConfig, data, device="cpu", log=print, evaluate_test=True,
              init_state=None, teacher=None):
    """Train one model.

    ``data`` maps ``train``/``val``/``test`` to ``(x, labels)`` arrays at ``cfg.net.input_size``.
    The checkpoint kept is the epoch with the best validation macro-F1 (ties: lower loss), or
    the last with ``cfg.keep_last``. ``init_state`` starts from those weights (a shared linear
    probe). ``teacher`` (a batch -> class probabilities) makes the loss the KL divergence from
    the teacher's outputs on the same augmented batch to the student's, in place of the labels.
    The test split is evaluated once, on that checkpoint; its figures are stored, never logged.
    Returns (result dict, state_dict).
    """
    device = torch.device(device)
    seed_everything(cfg.seed, deterministic=device.type == "cpu")
    xtr = torch.from_numpy(np.array(data["train"][0], np.float32)).to(device)  # copy: may be a memmap
    ytr = torch.as_tensor(data["train"][1]).to(device)
    xval, yval = data["val"]
    counts = np.bincount(data["train"][1], minlength=NUM_CLASSES)
    weights = (torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
               if cfg.class_weights else None)
    model = build(cfg.net, pretrained_weights=init_state is None)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    if channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
        xtr = xtr.contiguous(memory_format=torch.channels_last)
    steps = max(1, math.ceil(len(xtr) / cfg.batch_size))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    w_dev = weights.to(device) if weights is not None else None
    amp = device.type == "cuda"
    history, best, best_state = [], None, None
    t0 = time.perf_counter()
    # (phase, epochs, trained parameters, peak learning rate); one one-cycle schedule each.
    phases = [("probe", cfg.probe_epochs, list(model.head.parameters()), cfg.probe_lr),
              ("fine-tune", cfg.epochs, list(model.parameters()), cfg.lr)]
    phases = [p for p in phases if p[1]]
    if not phases:
        raise ValueError(f"{cfg.name}: no epochs to train")
    epoch, total_epochs = 0, cfg.probe_epochs + cfg.epochs
    for phase, n_epochs, params, lr in phases:
        probing = phase == "probe"
        for p in model.parameters():
            p.requires_grad_(not probing)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=n_epochs * steps,
                                                    pct_start=0.15)
        for _ in range(n_epochs):
            epoch += 1
            model.train()
            if probing or cfg.freeze_bn_stats:  # batch-norm statistics stay ImageNet's
                model.features.apply(_freeze_bn)
            perm = torch.randperm(len(xtr), device=device, generator=gen)
            # Accumulated on the device: a host sync per step would stall the GPU.
            total = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            for s in range(steps):
                idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                xb, yb = xtr[idx], ytr[idx]
                if cfg.augment > 0:
                    xb = augment(xb, gen, cfg.mean, cfg.std, cfg.augment)
                if cfg.shift_augment > 0:
                    xb = acquisition_jitter(xb, gen, cfg.mean, cfg.std, cfg.shift_augment)
                if cfg.present_augment > 0:
                    xb = presentation_jitter(xb, gen, cfg.mean, cfg.std, cfg.present_augment)
                if cfg.consistency:  # both views in one pass (batch-norm statistics frozen)
                    xb = torch.cat([xb, reexport(xb, gen, cfg.mean, cfg.std)])
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(xb).float()
                if cfg.consistency:
                    logits, other = logits[:len(idx)], logits[len(idx):]
                if teacher is not None:  # function matching: the teacher sees this very view
                    loss = F.kl_div(F.log_softmax(logits, 1), teacher(xb[:len(idx)]),
                                    reduction="batchmean")
                else:
                    loss = F.cross_entropy(logits, yb, weight=w_dev,
                                           label_smoothing=cfg.label_smoothing)
                if cfg.consistency:
                    loss = loss + cfg.consistency * js_divergence(logits, other)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * len(idx)
                correct += (logits.argmax(1) == yb).sum()
                seen += len(idx)
            best, best_state = _end_epoch(cfg, model, phase, epoch, total_epochs,
                                          float(total) / seen, int(correct) / seen, data,
                                          weights, device, history, best, best_state, t0, log)
    for p in model.parameters():
        p.requires_grad_(True)
    model.load_state_dict(best_state)
    result = {"config": cfg.to_dict(), "history": history, "best_epoch": best["epoch"],
              "val": best, "train_seconds": time.perf_counter() - t0, "device": str(device)}
    result["val_probs"] = np.round(softmax(predict_logits(model, xval, device)), 5).tolist()
    if evaluate_test:
        xte, yte = data["test"]
        test_logits = predict_logits(model, xte, device)
        result["test"] = summarize(yte, softmax(test_logits),
                                   _loss(test_logits, yte, weights, cfg.label_smoothing))
        result["test_probs"] = np.round(softmax(test_logits), 5).tolist()
    return result, best_state
