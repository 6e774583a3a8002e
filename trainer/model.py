"""The CNN family: one frozen config, one builder.

Variants are ``dataclasses.replace(BASE, ...)``. Every net ends in global average pooling and a
linear layer, so class activation maps stay possible and any input size works.
"""
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

from torch import nn

from .classes import NUM_CLASSES

PADDINGS = ("valid", "same", "reflect")
DROPOUTS = ("none", "classifier", "spatial")
DOWNSAMPLES = ("maxpool", "stride")


@dataclass(frozen=True)
class NetConfig:
    """Architecture of one variant.

    padding: ``valid`` (no padding, maps shrink), ``same`` (zero padding) or ``reflect``.
    dropout: ``none``, ``classifier`` (before the linear layer) or ``spatial`` (channel dropout
    after every block) at ``dropout_rate``.
    downsample: ``maxpool`` (2x2 pool after each block) or ``stride`` (the block's last conv has
    stride 2). ``stem_stride=2`` makes the very first convolution strided as well.
    """
    widths: tuple = (16, 32, 64, 128, 128)
    convs_per_block: int = 2
    padding: str = "same"
    batch_norm: bool = True
    dropout: str = "classifier"
    dropout_rate: float = 0.3
    downsample: str = "maxpool"
    stem_stride: int = 1
    input_size: int = 224

    def __post_init__(self):
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.dropout not in DROPOUTS:
            raise ValueError(f"dropout must be one of {DROPOUTS}, got {self.dropout!r}")
        if self.downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {self.downsample!r}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        return cls(**d)


def _conv(cin, cout, cfg, stride):
    pad = 0 if cfg.padding == "valid" else 1
    mode = "reflect" if cfg.padding == "reflect" else "zeros"
    layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=pad, padding_mode=mode,
                        bias=not cfg.batch_norm)]
    if cfg.batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class XrayNet(nn.Module):
    """Blocks of 3x3 convolutions -> global average pool -> (dropout) -> linear."""

    def __init__(self, cfg: NetConfig, num_classes=NUM_CLASSES):
        super().__init__()
        self.cfg = cfg
        layers, cin = [], 1
        for b, width in enumerate(cfg.widths):
            for c in range(cfg.convs_per_block):
                stride = 1
                if b == 0 and c == 0:
                    stride = cfg.stem_stride
                if cfg.downsample == "stride" and c == cfg.convs_per_block - 1:
                    stride = 2
                layers += _conv(cin, width, cfg, stride)
                cin = width
            if cfg.downsample == "maxpool":
                layers.append(nn.MaxPool2d(2))
            if cfg.dropout == "spatial":
                layers.append(nn.Dropout2d(cfg.dropout_rate))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.dropout_rate) if cfg.dropout == "classifier" else nn.Identity()
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.drop(x))


#: What a run's config records as ``family`` when it records none: the scratch CNN above.
SCRATCH = "scratch-cnn"


def _lite():
    from . import pretrained  # its weights package loads only for this family
    return pretrained


#: The model families, by the ``family`` their configs record: (config from a recorded dict,
#: module from a config, the number of classes and whether to load pretrained weights). A new
#: family is one entry here.
FAMILIES = {
    SCRATCH: (NetConfig.from_dict, lambda cfg, n, weights: XrayNet(cfg, n)),
    "efficientnet-lite0": (
        lambda d: _lite().LiteConfig(**d),
        lambda cfg, n, weights: _lite().EfficientNetLite(
            cfg if weights else replace(cfg, pretrained=False), n)),
}


def _family(name):
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def build(cfg, num_classes=NUM_CLASSES, pretrained_weights=True):
    """The module for a config of any family; ``pretrained_weights=False`` skips loading
    pretrained weights that a state dict will replace."""
    return _family(getattr(cfg, "family", SCRATCH))[1](cfg, num_classes, pretrained_weights)


def net_from_dict(d):
    """The architecture config recorded in a run, whichever family it belongs to."""
    return _family(d.get("family", SCRATCH))[0](d)


@lru_cache(maxsize=None)
def mmac(cfg):
    """Millions of multiply-accumulates for one image through the net of ``cfg`` (the cost
    the report lists beside every run; counted by torch's FLOP counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    model = build(cfg, pretrained_weights=False).eval()  # the cost does not depend on them
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, cfg.input_size, cfg.input_size))
    return counter.get_total_flops() / 2e6
