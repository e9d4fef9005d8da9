"""Backbones every method of a benchmark shares (a fresh copy of the same initial weights per method)."""
from __future__ import annotations


from torch import nn



def small_cnn(in_channels: int, n_classes: int, side: int = 28) -> nn.Sequential:
    """Two 3x3 conv blocks (16 and 32 channels, ReLU, 2x2 max-pool), a 128-unit dense layer, the output layer."""
    flat = 32 * (((side - 2) // 2 - 2) // 2) ** 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, n_classes))
