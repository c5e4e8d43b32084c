"""The networks: the paper's (Table 1), the CIFAR ResNet-18 of the data-pruning literature, and any
factory of the user's (`build_model`).

Table 1 goes from 8x8x64 to 4x4x128 with no pooling in between; read literally, the first
64->128 convolution has stride 2, and that is how it is built here. `batchnorm=True` adds a
BatchNorm after every convolution (not in the paper). Every network returns logits: the paper's
softmax lives in the cross-entropy loss.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from dyntrain.config import ConfigError

# (in_channels, out_channels, stride) per convolution; "M" = 2x2 max pool.
TABLE_1 = [
    (3, 32, 1), (32, 32, 1), (32, 32, 1), "M",  # 32x32x32 -> 16x16x32
    (32, 64, 1), (64, 64, 1), (64, 64, 1), (64, 64, 1), "M",  # 16x16x64 -> 8x8x64
    (64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 128, 1), "M",  # 4x4x128 -> 2x2x128
    (128, 128, 1), (128, 128, 1), (128, 128, 1),  # 2x2x128
]


class PaperNet(nn.Module):
    def __init__(self, num_classes: int = 10, batchnorm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for spec in TABLE_1:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cin, cout, stride = spec
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images, as the data-pruning literature trains it on CIFAR (InfoBatch, RS2,
    DeepCore): a 3x3 stride-1 stem without max pool, stages of 64-128-256-512 channels, two basic
    blocks each (torchvision's ImageNet stem would shrink 32x32 inputs to 8x8 before the first block)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


BUILTIN = ("paper", "resnet18")


def model_name(model: str | Callable[..., nn.Module]) -> str:
    """What runs record as the model: a built-in name, MODULE:FUNCTION, or a callable's module:qualname."""
    return model if isinstance(model, str) else f"{model.__module__}:{model.__qualname__}"


def factory(model: str | Callable[..., nn.Module], batchnorm: bool = False) -> Callable[[int], nn.Module]:
    """num_classes -> a new network: a built-in, an importable MODULE:FUNCTION, or a callable, each
    called as FUNCTION(num_classes=K). A module that does not import or a missing attribute is a
    ConfigError naming it."""
    if callable(model):
        return lambda k: model(num_classes=k)
    if model == "paper":
        return lambda k: PaperNet(k, batchnorm)
    if model == "resnet18":
        return lambda k: ResNet18(k)
    module_name, _, attr = model.partition(":")
    try:
        fn = importlib.import_module(module_name)
    except Exception as err:  # any import error of the user's module, said in one line
        raise ConfigError(f"model={model!r}: cannot import {module_name} ({type(err).__name__}: {err})") from None
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"model={model!r}: {module_name} has no attribute {attr}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"model={model!r}: {attr} is not callable")
    return lambda k: fn(num_classes=k)


def build_model(model: str | Callable[..., nn.Module], num_classes: int, image_shape: tuple[int, ...],
                batchnorm: bool = False) -> nn.Module:
    """The network, checked: the factory must return an nn.Module whose logits on a probe batch of
    the data's real image shape (C, H, W) are (batch, num_classes). Anything else is a ConfigError."""
    name = model_name(model)
    try:
        net = factory(model, batchnorm)(num_classes)
    except ConfigError:
        raise
    except Exception as err:  # the user's factory failed: say so in one line
        raise ConfigError(f"model={name!r}: the factory raised {type(err).__name__}: {err}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model={name!r}: the factory returned {type(net).__name__}, not a torch.nn.Module")
    was_training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, *image_shape))
    except Exception as err:
        raise ConfigError(f"model={name!r}: a batch of shape (2, {', '.join(map(str, image_shape))}) fails: "
                          f"{type(err).__name__}: {err}") from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model={name!r}: logits of shape {got} on a batch of shape (2, "
                          f"{', '.join(map(str, image_shape))}); expected (2, {num_classes})")
    return net
