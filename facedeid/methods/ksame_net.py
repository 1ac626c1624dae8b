"""k-Same-Net: k-Same in the latent space of the project's face generator.

Meden, Emeršič, Štruc & Peer, "k-Same-Net: k-Anonymity with generative deep neural networks for
face deidentification", Entropy 20(1), 2018: instead of averaging pixels (k-Same-Pixel, blurry
ghost faces) or eigenface coefficients, average the k identities in a generative model's input
space and let the generator draw one sharp face for the cluster. Here the generative model is
:mod:`facedeid.models.face_generator` (trained in this project on people who are never test
subjects): every face is encoded to its :class:`~facedeid.models.face_generator.FaceLatent`,
the k codes are averaged, the generator decodes the mean.

As with :mod:`facedeid.methods.ksame` there are two uses:

* dataset level, where Newton's guarantee (rank-1 <= 1/k against the originals) holds:
  :func:`k_same_net` clusters a whole set of aligned faces with the k-Same rule
  (:func:`facedeid.methods.ksame.k_same_clusters`) on their latent codes and gives every member
  the cluster's decoded mean;
* per image, the registered method ``ksame_net``: the face's code is averaged with its k-1
  nearest codes among a gallery of *other* people (default: the 160 train people of the
  identity-disjoint celeba-id200 split), so one image never holds a 1/k guarantee by itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..alignment import FaceCrop
from ..errors import InvalidParameterError
from .base import DeidMethod, FaceContext, Param, load_weights_once
from .ksame import fit_gallery, k_same_clusters, nearest_in_gallery, require_gallery_size
from .private_encoder import match_colours
from .registry import register

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
DEFAULT_GENERATOR = CHECKPOINT_DIR / "face_generator.pt"

def encode_faces(encoder, faces: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``(N, S, S, 3) uint8`` aligned faces -> ``(N, D) float32`` flat latent codes."""
    import torch

    from ..models.tensors import crops_to_tensor

    codes = []
    with torch.no_grad():
        for start in range(0, len(faces), batch_size):
            codes.append(encoder(crops_to_tensor(faces[start:start + batch_size])).flat().numpy())
    return np.concatenate(codes) if codes else np.zeros((0, 0), np.float32)


def decode_codes(generator, codes: np.ndarray) -> np.ndarray:
    """``(N, D)`` flat codes -> ``(N, S, S, 3) uint8`` faces."""
    import torch

    from ..models.face_generator import FaceLatent
    from ..models.tensors import tensor_to_crops

    with torch.no_grad():
        latent = FaceLatent.from_flat(torch.from_numpy(codes.astype(np.float32)), generator.config)
        return tensor_to_crops(generator(latent))


def k_same_net(aligned: np.ndarray, k: int, encoder, generator) -> np.ndarray:
    """Dataset-level k-Same-Net: every face of ``aligned`` replaced by its cluster's decoded
    mean code (each output shared by k to 2k-1 faces)."""
    codes = encode_faces(encoder, aligned)
    means = np.empty_like(codes)
    for members in k_same_clusters(codes, k):
        means[members] = codes[members].mean(axis=0)
    return decode_codes(generator, means)


@register
class KSameNet(DeidMethod):
    """Per-image k-Same-Net: decode the mean latent code of the face and k-1 gallery faces."""

    name = "ksame_net"
    summary = "k-Same-Net: average k identities in the face generator's latent space and draw one face"
    reference = "Meden et al., Entropy 2018 (k-Same-Net); Newton et al. 2005 (k-Same)"
    space = "aligned"
    aligned_size = 64
    cover_whole_box = False  # a drawn face, as private_encoder: no mosaic frame around it
    params = (
        Param("k", int, 10, "identities averaged (the input and its k-1 nearest gallery codes)",
              minimum=2, maximum=1000, safe_min=5),
        Param("gallery", str, "", "folder of face photos, one per person; empty = the 160 train "
              "people of celeba-id200's identity-disjoint split when ../shared/data exists"),
        Param("generator", str, "", "face generator checkpoint; empty = the shipped "
              "face_generator.pt"),
    )

    def validate(self) -> None:
        path = Path(self.config["generator"]) if self.config["generator"] else DEFAULT_GENERATOR
        from ..models.face_generator import load_generator
        self.encoder, self.generator, _ = load_weights_once(path, load_generator)
        self.aligned_size = int(self.generator.config.image_size)

    def _gallery_codes(self) -> np.ndarray:
        if not hasattr(self, "_codes"):
            gallery = fit_gallery(self.config["gallery"], self.aligned_size)
            require_gallery_size(self.config["k"], len(gallery))
            self._codes = encode_faces(self.encoder, gallery)
        return self._codes

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        return self.apply_batch([crop], [context])[0]

    def apply_batch(self, crops: list[FaceCrop], contexts: list[FaceContext]) -> list[np.ndarray]:
        if not crops:
            return []
        gallery = self._gallery_codes()
        codes = encode_faces(self.encoder, np.stack([crop.pixels for crop in crops]))
        k = self.config["k"]
        means = []
        for code in codes:
            nearest = nearest_in_gallery(gallery, code, k - 1)
            means.append(np.concatenate([code[None], gallery[nearest]]).mean(axis=0))
        faces = decode_codes(self.generator, np.stack(means))
        return [match_colours(face, crop.pixels, crop.mask) for face, crop in zip(faces, crops)]
