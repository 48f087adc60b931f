"""Reference architectures: the paper's LeNets, and AlexNet / VGG-16 with torchvision's layer shapes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["VGG16", "AlexNet", "LeNet5", "LeNet300100", "build", "paper_layer_names"]


class LeNet300100(nn.Module):
    """784-300-100-10 multilayer perceptron (paper Table 2)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.ip1 = nn.Linear(784, 300)
        self.ip2 = nn.Linear(300, 100)
        self.ip3 = nn.Linear(100, num_classes)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        return self.ip3(self.act(self.ip2(self.act(self.ip1(x)))))


class LeNet5(nn.Module):
    """Caffe's LeNet-5 variant the paper used: conv 20 and 50 (5x5), fc 500, fc 10; 431K weights."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.ip1 = nn.Linear(800, 500)
        self.ip2 = nn.Linear(500, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        return self.ip2(self.act(self.ip1(x.flatten(1))))


class AlexNet(nn.Module):
    """torchvision's AlexNet layout (same module names, so its state_dicts load)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class VGG16(nn.Module):
    """torchvision's VGG-16 (configuration D, no batch norm) layout."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def _paper_names(model: nn.Module, convs: list[str], fcs: list[str]) -> dict[str, str]:
    conv_mods = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    fc_mods = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return dict(zip(conv_mods, convs, strict=True)) | dict(zip(fc_mods, fcs, strict=True))


def paper_layer_names(arch: str) -> dict[str, str]:
    """Module name -> the layer name the paper's tables use (``conv1``..``fc8``, ``conv1_1``..``fc8``)."""
    with torch.device("meta"):
        if arch == "alexnet":
            return _paper_names(AlexNet(), [f"conv{i}" for i in range(1, 6)], ["fc6", "fc7", "fc8"])
        if arch == "vgg16":
            blocks = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
            convs = [f"conv{b}_{i}" for b, n in blocks for i in range(1, n + 1)]
            return _paper_names(VGG16(), convs, ["fc6", "fc7", "fc8"])
    raise ConfigError(f"no paper layer names for '{arch}'; choose alexnet or vgg16")

_BUILDERS: dict[str, type[nn.Module]] = {
    "lenet-300-100": LeNet300100, "lenet-5": LeNet5, "alexnet": AlexNet, "vgg16": VGG16,
}


def build(name: str, **kwargs: int) -> nn.Module:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model '{name}'; choose one of {sorted(_BUILDERS)}")
    return _BUILDERS[name](**kwargs)
