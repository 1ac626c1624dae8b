"""The one conversion between numpy face crops and the networks' tensors.

Crops travel as ``(N, H, W, 3) uint8`` RGB (what alignment and the pipeline produce); networks
take and give ``(N, 3, H, W)`` float in [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch


def crops_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3) uint8`` -> ``(N, 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0


def tensor_to_crops(faces: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` float in [0, 1] -> ``(N, H, W, 3) uint8`` (rounded, clipped)."""
    return (faces.detach().permute(0, 2, 3, 1) * 255.0).round().clamp(0, 255).byte().numpy()
