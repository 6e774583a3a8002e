"""Training and export stay working: a tiny net, one epoch, a handful of real images."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from trainer.model import NetConfig, build  # noqa: E402
from trainer.pretrained import LiteConfig  # noqa: E402
from trainer.train import RunConfig  # noqa: E402
from xray_infer import Classifier  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kw", [dict(padding="valid", input_size=160), dict(padding="reflect"),
                                dict(dropout="spatial"), dict(batch_norm=False),
                                dict(downsample="stride"), dict(stem_stride=2)])
def test_family_variants_build_and_run(kw):
    cfg = NetConfig(widths=(4, 8, 8, 8, 8), **kw)
    out = build(cfg)(torch.zeros(2, 1, cfg.input_size, cfg.input_size))
    assert out.shape == (2, 3)


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="padding"):
        NetConfig(padding="circular")


def test_runs_from_old_records_read_as_random_split():
    d = RunConfig(val_split="earliest").to_dict()
    assert RunConfig.from_dict(d).val_split == "earliest"
    del d["val_split"]  # recorded before the field existed
    assert RunConfig.from_dict(d).val_split == "random"


def test_export_refuses_members_validated_on_different_splits(tmp_path):
    from trainer.export import export
    net = NetConfig(widths=(4, 8), input_size=32)
    state = build(net).state_dict()
    members = [(RunConfig(net=net), state), (RunConfig(net=net, val_split="earliest"), state)]
    with pytest.raises(ValueError, match="validation split"):
        export(members, tmp_path / "m.onnx", data={}, model_version="0", provenance={})
    assert not list(tmp_path.iterdir())


def test_train_one_epoch_and_export(tmp_path, data):
    out = tmp_path / "run"
    common = [sys.executable, "-m", "trainer"]
    p = subprocess.run(common + ["train", "--out", out, "--limit", "6", "--epochs", "1",
                                 "--size", "64", "--widths", "4", "8", "--name", "tiny",
                                 "--data", data],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    result = json.loads((out / "runs" / "tiny_s0.json").read_text())  # where every run goes
    assert result["history"][0]["epoch"] == 1 and result["test"]["n"] == 18
    assert (out / "runs" / "tiny_s0.pt").exists() and not list(out.glob("runs/*.tmp*"))
    model = tmp_path / "tiny.onnx"
    # --select finds a `train` run as it finds a grid's (it used to find nothing there)
    p = subprocess.run(common + ["export", "--select", out, "--ensemble", "1", "--out", model,
                                 "--limit", "6", "--data", data],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    onnx.checker.check_model(onnx.load(str(model)))
    clf = Classifier(model, providers=["CPUExecutionProvider"], scope=False)
    assert clf.spec.input_size == 64 and clf.spec.metrics["test"]["n"] == 18
    assert clf.spec.scope_output == "scope_distance" and clf.spec.scope["threshold"] > 0
    assert (RunConfig.from_dict(clf.spec.provenance["run_configs"][0])
            == RunConfig.from_dict(result["config"]))
    r = clf.classify(np.zeros((100, 80), np.uint8))
    assert r[0].ok


@pytest.mark.parametrize("net", [NetConfig(widths=(4, 8), input_size=32),
                                 LiteConfig(input_size=64, pretrained=False)])
def test_class_maps_average_to_the_calibrated_logits(tmp_path, net):
    """Exported CAM output: for one member, the spatial mean of each class map is its
    calibrated logit (softmax of the means = the model's probabilities), within 1e-4."""
    from trainer.export import export
    from xray_infer.model import load_model
    from xray_infer.spec import softmax
    torch.manual_seed(0)
    cfg = RunConfig(net=net)
    member = build(net).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, net.input_size, net.input_size)).astype(np.float32)
    y = np.arange(40) % 3
    export([(cfg, member.state_dict())], tmp_path / "m.onnx",
           {"train": (x, y), "val": (x, y), "test": (x, y)},
           model_version="0", provenance={})
    sess, spec = load_model(tmp_path / "m.onnx", providers=["CPUExecutionProvider"])
    assert spec.heatmap_output == "class_maps"
    log_p, maps = sess.run([spec.output_name, spec.heatmap_output], {spec.input_name: x[:8]})
    assert maps.shape[:2] == (8, 3) and maps.shape[2] >= 1
    means = maps.mean(axis=(2, 3))
    assert np.abs(softmax(means) - np.exp(log_p)).max() < 1e-4
    with torch.no_grad():
        logits = member(torch.from_numpy(x[:8])).numpy()
    assert np.abs(means - logits / spec.metrics["temperatures"][0]).max() < 1e-4
    # The scope output is the squared Mahalanobis distance of the classifier's input, fitted on
    # the "train" arrays: the same formula in float64 on the graph's own features.
    import onnx
    from trainer import scope
    proto = onnx.load(str(tmp_path / "m.onnx"))
    [features] = scope.features(proto, x)
    want = scope.Gaussians(features, y).distance(features[:8])
    got = sess.run([spec.scope_output], {spec.input_name: x[:8]})[0]
    assert np.allclose(got, want, rtol=1e-3)
    assert spec.scope["threshold"] == pytest.approx(np.quantile(
        scope.Gaussians(features, y).distance(features), scope.VALIDATION_PASS))


def test_imagenet_weights_load_into_the_one_channel_lite0():
    """The folded stem equals the RGB stem fed a grey image three times; the rest is copied."""
    from trainer.pretrained import EfficientNetLite, imagenet_state_dict
    net = EfficientNetLite(LiteConfig(input_size=64)).eval()
    src = imagenet_state_dict()
    stem = net.features[0][1].weight
    assert torch.allclose(stem, src["_conv_stem.weight"].sum(1, keepdim=True))
    head_bn = net.features[-1][2]
    assert torch.equal(head_bn.running_var, src["_bn1.running_var"])
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        LiteConfig(input_size=100)


def test_lite_run_config_round_trips():
    cfg = RunConfig(net=LiteConfig(input_size=96), probe_epochs=1, shift_augment=1.0)
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.net, LiteConfig)


def test_acquisition_jitter_keeps_range_and_changes_images():
    from trainer.train import acquisition_jitter
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(8, 1, 64, 64) - 0.5) / 0.5
    y = acquisition_jitter(x, gen, 0.5, 0.5)
    assert y.shape == x.shape and y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    assert (y - x).abs().mean() > 0.01


def test_presentation_jitter_is_seeded_keeps_range_and_changes_images():
    from trainer.train import presentation_jitter
    # a smooth film-like gradient, so JPEG and quantisation change it in a measurable way
    ramp = torch.linspace(-1, 1, 64).view(1, 1, 1, 64).expand(16, 1, 64, 64).contiguous()
    runs = [presentation_jitter(ramp, torch.Generator().manual_seed(3), 0.5, 0.5)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # the generator decides everything, cv2 included
    y = runs[0]
    assert y.shape == ramp.shape and y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    changed = (y - ramp).abs().flatten(1).mean(1) > 0.005
    assert 0 < int(changed.sum()) <= 16
    assert torch.equal(presentation_jitter(ramp, torch.Generator(), 0.5, 0.5, strength=0.0)
                       .round(decimals=4), ramp.round(decimals=4))


def test_later_phases_without_phase_one_say_so(tmp_path):
    p = subprocess.run([sys.executable, "-m", "trainer", "experiments", "--out", str(tmp_path),
                        "--phases", "2", "3", "--limit", "2"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 1 and "run phase 1 first" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_export_select_with_nothing_to_select_says_so(tmp_path):
    p = subprocess.run([sys.executable, "-m", "trainer", "export", "--select", str(tmp_path),
                        "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 1 and "no runs with checkpoints" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
