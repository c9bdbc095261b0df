"""A configurable CNN for image classification: the architecture is entirely its config.

Layout: ``num_blocks`` conv blocks, block ``i`` has ``round(base_channels * channel_growth**i)``
channels and ``convs_per_block`` convolutions (conv -> [batch norm] -> ReLU), then 2x2 pooling;
a global average pool (or flatten) feeds an optional hidden layer of ``head_width`` and the classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hybrid._dataclass_io import require


@dataclass(frozen=True)
class CNNConfig:
    """Architecture of :class:`CNN`. Every field is a search-space candidate."""

    in_channels: int = 1
    """Channels of the input image (1 for grey scale)."""
    image_size: int = 28
    """Height and width of the (square) input image, in pixels."""
    num_classes: int = 10
    """Number of output classes."""
    num_blocks: int = 2
    """Number of conv blocks; each ends in a 2x2 pooling that halves the resolution."""
    base_channels: int = 32
    """Channels of the first block."""
    channel_growth: float = 2.0
    """Channel multiplier from one block to the next."""
    convs_per_block: int = 1
    """Convolutions inside each block before its pooling."""
    kernel_size: int = 3
    """Odd convolution kernel size ("same" padding keeps the resolution inside a block)."""
    batch_norm: bool = True
    """Batch norm after each convolution."""
    dropout: float = 0.25
    """Dropout probability before the classifier (and after the hidden head layer)."""
    pooling: Literal["max", "avg"] = "max"
    """Pooling after each block."""
    global_pool: bool = False
    """Global average pooling before the head (fewer parameters) instead of flattening."""
    head_width: int = 128
    """Width of the hidden fully connected layer; 0 means the classifier follows the features directly."""

    def __post_init__(self) -> None:
        require(self.in_channels >= 1, f"in_channels must be >= 1, but got {self.in_channels}")
        require(self.num_classes >= 2, f"num_classes must be >= 2, but got {self.num_classes}")
        require(1 <= self.num_blocks <= 5, f"num_blocks must be in [1, 5], but got {self.num_blocks}")
        require(
            self.image_size >= 2**self.num_blocks,
            f"image_size must be >= 2**num_blocks = {2**self.num_blocks}, but got {self.image_size}",
        )
        require(self.base_channels >= 1, f"base_channels must be >= 1, but got {self.base_channels}")
        require(self.channel_growth >= 1.0, f"channel_growth must be >= 1, but got {self.channel_growth}")
        require(1 <= self.convs_per_block <= 4, f"convs_per_block must be in [1, 4], but got {self.convs_per_block}")
        require(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            f"kernel_size must be a positive odd integer, but got {self.kernel_size}",
        )
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), but got {self.dropout}")
        require(self.head_width >= 0, f"head_width must be >= 0, but got {self.head_width}")

    def block_channels(self) -> list[int]:
        """Output channels of each block."""
        return [max(1, round(self.base_channels * self.channel_growth**i)) for i in range(self.num_blocks)]


class CNN(nn.Module):
    """Conv blocks -> pooled features -> optional hidden layer -> logits."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for out_channels in config.block_channels():
            for _ in range(config.convs_per_block):
                layers.append(
                    nn.Conv2d(
                        channels,
                        out_channels,
                        config.kernel_size,
                        padding=config.kernel_size // 2,
                        bias=not config.batch_norm,
                    )
                )
                if config.batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                channels = out_channels
            layers.append(nn.MaxPool2d(2) if config.pooling == "max" else nn.AvgPool2d(2))
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2**config.num_blocks
        if config.global_pool:
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
            flat = channels
        else:
            self.pool = nn.Identity()
            flat = channels * side * side
        head: list[nn.Module] = [nn.Flatten(), nn.Dropout(config.dropout)]
        if config.head_width > 0:
            head += [nn.Linear(flat, config.head_width), nn.ReLU(inplace=True), nn.Dropout(config.dropout)]
            flat = config.head_width
        head.append(nn.Linear(flat, config.num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, channels, height, width)`` images to ``(batch, num_classes)`` logits.

        A flat ``(batch, channels * height * width)`` input is reshaped first, so rows straight
        from a table of pixels can be fed in.
        """
        if images.dim() == 2:
            side = self.config.image_size
            # (batch, C*H*W) -> (batch, C, H, W); a row of the wrong width raises instead of changing the batch size.
            images = images.reshape(images.shape[0], self.config.in_channels, side, side)
        return self.head(self.pool(self.features(images)))


WIDTH_FIELDS = ("base_channels", "head_width")
"""Config fields a student scales by ``width_multiplier``."""


def make_student(
    teacher_config: Mapping[str, Any], *, width_multiplier: float, teacher_dir: str | Path | None = None
) -> dict[str, Any]:
    """A narrower CNN: the teacher's recorded config with :data:`WIDTH_FIELDS` scaled by ``width_multiplier``
    (rounded, at least 1; a ``head_width`` of 0 stays 0). The student trains from fresh weights, so
    ``teacher_dir`` is not read."""
    return {
        k: (max(1, round(v * width_multiplier)) if v else v) if k in WIDTH_FIELDS else v
        for k, v in teacher_config.items()
    }
