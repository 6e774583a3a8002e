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
    result = json.loads((out / "tiny_s0.json").read_text())
    assert result["history"][0]["epoch"] == 1 and result["test"]["n"] == 18
    model = tmp_path / "tiny.onnx"
    p = subprocess.run(common + ["export", "--run", out / "tiny_s0.json", "--out", model,
                                 "--limit", "6", "--data", data],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    onnx.checker.check_model(onnx.load(str(model)))
    clf = Classifier(model, providers=["CPUExecutionProvider"])
    assert clf.spec.input_size == 64 and clf.spec.metrics["test"]["n"] == 18
    assert (RunConfig.from_dict(clf.spec.provenance["run_configs"][0])
            == RunConfig.from_dict(result["config"]))
    r = clf.classify(np.zeros((100, 80), np.uint8))
    assert r[0].ok
