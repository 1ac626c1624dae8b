"""A small multi-task face-attribute classifier: one shared trunk, one binary head per attribute.

This is the "feature selection network" role of EEAE (Liu et al., IEEE IoT-J, seed 004): a
multi-task attribute classifier whose agreement before/after de-identification measures how
much non-identity information (gender, smile, glasses, age, ...) the anonymization kept.
Here it is a *utility evaluator* only; it is trained from scratch on CelebA by
:mod:`facedeid.training.attributes` (no pretrained backbone is available offline).

Input contract (shared by training and :class:`facedeid.evaluation.services.AttributeService`):
:func:`attribute_crop` — the face box's *box-estimated* five points aligned by
:class:`facedeid.alignment.FaceAligner` onto a ``64x64`` crop. The box (not detected landmarks)
drives the alignment on purpose: the original and the anonymized image are then cropped at
exactly the same place from the original's known box, so a change of prediction is due to the
anonymization, not to a landmark detector that fails on a blurred/masked face.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


DEFAULT_ATTRIBUTES = ("Male", "Smiling", "Big_Nose", "Eyeglasses", "Young")
CROP_SIZE = 64
FACE_FRACTION = 0.8  # FaceAligner default: the 112-template face fills 80% of the crop


def attribute_crop(image: np.ndarray, box: np.ndarray, size: int = CROP_SIZE,
                   margin: int = 0) -> np.ndarray:
    """``(size + 2*margin, size + 2*margin, 3) uint8`` aligned crop of the face in ``box``.

    ``margin`` widens the canvas without changing the face's scale or position relative to the
    centre, so the central ``size x size`` window of a margin crop is exactly the plain crop
    (training caches margin crops and random-shifts inside them).
    """
    from ..alignment import FaceAligner
    from ..detection.base import Face

    total = size + 2 * margin
    aligner = FaceAligner(size=total, face_fraction=FACE_FRACTION * size / total)
    return aligner.align(image, Face(box=np.asarray(box, dtype=np.float32))).pixels


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                                   bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class AttributeNet(nn.Module):
    """Shared conv trunk + one linear head per attribute.

    ``forward``: ``(N, 3, 64, 64)`` float RGB in [0, 1] -> ``(N, K)`` logits (sigmoid > 0.5
    means the attribute is present).
    """

    def __init__(self, attributes=DEFAULT_ATTRIBUTES, widths=(16, 32, 64, 128),
                 dropout: float = 0.2):
        super().__init__()
        self.attributes = list(attributes)
        layers, channels = [], 3
        for width in widths:  # each stage halves the resolution: 64 -> 32 -> 16 -> 8 -> 4
            layers += [_conv_bn_relu(channels, width, 2), _conv_bn_relu(width, width, 1)]
            channels = width
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList(nn.Linear(channels, 1) for _ in self.attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk((x - 0.5) / 0.25).mean(dim=(2, 3))
        features = self.dropout(features)
        return torch.cat([head(features) for head in self.heads], dim=1)
