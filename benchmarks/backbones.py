"""Backbones every method of a benchmark shares (a fresh copy of the same initial weights per method).

``--backbone`` picks one by name from :data:`BACKBONES`: ``(in_channels, n_classes, side) -> nn.Module``.
"""
from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn


def small_cnn(in_channels: int, n_classes: int, side: int = 28) -> nn.Sequential:
    """Two 3x3 conv blocks (16 and 32 channels, ReLU, 2x2 max-pool), a 128-unit dense layer, the output layer:
    176 units."""
    flat = 32 * (((side - 2) // 2 - 2) // 2) ** 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, n_classes))


def resnet18(in_channels: int, n_classes: int, side: int = 28) -> torchvision.models.ResNet:
    """torchvision's ResNet-18 in the MedMNIST benchmark's variant for 28x28 inputs: a 3x3 stride-1 first
    convolution and no max-pool (11.2 M parameters, 4,800 units in 20 layers). Any ``side`` >= 8 works."""
    model = torchvision.models.resnet18(num_classes=n_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def vgg11(in_channels: int, n_classes: int, side: int = 28) -> torchvision.models.VGG:
    """torchvision's VGG-11 (eight 3x3 convolutions) for 28x28 inputs: its fifth max-pool, which would leave no
    pixel, becomes ``nn.Identity``; the features are averaged to 512 and the classifier is 512-512-``n_classes``
    (torchvision's 25,088-4,096-4,096 head would hold 120 M of its 129 M parameters): 9.8 M parameters,
    3,776 units in 10 layers. ``side`` >= 16."""
    model = torchvision.models.vgg11(num_classes=n_classes)
    model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    model.features[-1] = nn.Identity()
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(
        nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
        nn.Linear(512, n_classes))
    return model


def mlp400(in_channels: int, n_classes: int, side: int = 28) -> nn.Sequential:
    """The RNF paper's Permuted-MNIST network at 400 units a layer: the image flattened, two dense layers of
    400 units (ReLU), the output layer: 800 units."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * side * side, 400), nn.ReLU(), nn.Linear(400, 400),
                         nn.ReLU(), nn.Linear(400, n_classes))


#: ``--backbone`` name -> factory ``(in_channels, n_classes, side) -> model``.
BACKBONES: dict[str, Callable[..., nn.Module]] = {"small-cnn": small_cnn, "resnet18": resnet18, "vgg11": vgg11,
                                                  "mlp-400": mlp400}
