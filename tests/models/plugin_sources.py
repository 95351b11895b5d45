"""Plugin files for the plugin tests: written into tmp_path, loaded like a user's."""

from __future__ import annotations

from pathlib import Path

GOOD = '''
import torch
from torch import nn

from fusioncli import register_strategy


def encoder():
    return nn.Sequential(nn.Conv2d(4, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())


class Tiny(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.encoder_rgb, self.encoder_lidar = encoder(), encoder()
        self.head = nn.Linear(32, num_classes)

    def forward(self, rgb, xyza):
        return self.head(torch.cat([self.encoder_rgb(rgb), self.encoder_lidar(xyza)], 1))


@register_strategy("{name}", description="two small convs, concatenated")
def build(backbone, num_classes):
    return Tiny(num_classes)
'''

# MultiBench's low-rank fusion bug: the factors live in a plain list (never trained, never
# saved), plus a layer the forward never uses.
PLAIN_LIST = '''
import torch
from torch import nn

from fusioncli import register_strategy


class LowRank(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.encoder_rgb = nn.Sequential(nn.Conv2d(4, 8, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.encoder_lidar = nn.Sequential(nn.Conv2d(4, 8, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.factors = [torch.randn(9, 4 * 16, requires_grad=True) for _ in range(2)]
        self.head = nn.Linear(16, num_classes)
        self.head_unused = nn.Linear(3, 3)

    def forward(self, rgb, xyza):
        one = torch.ones(rgb.shape[0], 1)
        a = torch.cat([self.encoder_rgb(rgb), one], 1) @ self.factors[0]
        b = torch.cat([self.encoder_lidar(xyza), one], 1) @ self.factors[1]
        return self.head((a * b).reshape(-1, 4, 16).sum(1))


@register_strategy("lowrank-list", description="low-rank fusion with its factors in a plain list")
def build(backbone, num_classes):
    return LowRank(num_classes)
'''

BROKEN_IMPORT = '''
from fusioncli import register_strategy

raise RuntimeError("this plugin is broken")
'''

BROKEN_BUILD = '''
from fusioncli import register_strategy


@register_strategy("broken-build", description="fails to build")
def build(backbone, num_classes):
    return {}["missing"]
'''


def write_plugin(folder: Path, text: str = GOOD, *, name: str = "tiny-plugin", file: str = "tiny_plugin.py") -> Path:
    """Write a plugin file into ``folder``; ``{name}`` in GOOD becomes the strategy's name."""
    path = folder / file
    path.write_text(text.replace("{name}", name), encoding="utf-8")
    return path
