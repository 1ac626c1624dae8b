"""EEAE as a registered method: the privacy removal network of one attribute set (seed 004).

Liu et al., "Enhanced Embedded AutoEncoders: An Attribute-Preserving Face De-identification
Framework", IEEE IoT-J 2023 (seed 004), §III, Fig. 2-3, Eq. 7: the aligned face is encoded by
the frozen external autoencoder, the internal autoencoder rewrites the representation into the
attribute network's feature map (identity pushed out by the PEN term), and the frozen external
decoder draws it. What comes out is not a photo of a person: it is an image on which an
attribute model of the chosen set (``attributes``) still reads gender, smile, nose, age or
glasses, and which the paper and docs/benchmarks.md show no recognizer links to the person.

``variant=sprn`` runs the paper's SPRN ablation (Eq. 8, one plain autoencoder trained with the
same multiple loss) for the Tables X-XI comparison.

Checkpoints: ``facedeid/checkpoints/eeae/external.pt`` (shared external autoencoder) and
``facedeid/checkpoints/eeae/<set>.pt`` per attribute set (``facedeid train eeae``; commands in
docs/checkpoints.md). The method is deterministic, so a face tracked through a video keeps one
output style without a per-track seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..alignment import FaceCrop
from .base import DeidMethod, FaceContext, Param, load_weights_once
from .registry import register

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "eeae"
ATTRIBUTE_SETS = ("g", "s", "b", "y", "gs", "gsb", "gsbe")  # models.eeae.ATTRIBUTE_SETS


@register
class EEAEMethod(DeidMethod):
    """The attribute set's PRN (or SPRN) applied to the aligned face."""

    name = "eeae"
    summary = ("EEAE: embedded autoencoders keep the chosen attributes (g=gender, s=smile, "
               "b=big nose, y=young, e=glasses) and drop identity (seed 004)")
    reference = "Liu et al., IEEE IoT-J 2023 (EEAE, seed 004) §III, Eq. 6-8"
    space = "aligned"
    aligned_size = 64
    trained_with = ("faceres",)
    params = (
        Param("attributes", str, "gsb", "attribute set the model keeps",
              choices=ATTRIBUTE_SETS),
        Param("variant", str, "prn", "prn = the paper's embedded autoencoders; sprn = the "
              "single-autoencoder ablation (Eq. 8)", choices=("prn", "sprn")),
        Param("checkpoint", str, "", "attribute-set checkpoint (.pt); empty = the shipped "
              "eeae/<attributes>.pt"),
        Param("external", str, "", "external autoencoder checkpoint; empty = the shipped "
              "eeae/external.pt"),
        Param("batch_size", int, 64, "faces per network call", minimum=1, maximum=4096),
    )

    def validate(self) -> None:
        from ..errors import MissingWeightsError
        from ..models.eeae import PrivacyRemovalNetwork, load_eeae, load_external

        code = self.config["attributes"]
        set_path = Path(self.config["checkpoint"] or CHECKPOINT_DIR / f"{code}.pt")
        external_path = Path(self.config["external"] or CHECKPOINT_DIR / "external.pt")
        networks, payload = load_weights_once(set_path, load_eeae)
        if payload["attributes"] != code:
            raise MissingWeightsError(f"{set_path} holds the attribute set "
                                      f"{payload['attributes']!r}, not {code!r}")
        external, _ = load_weights_once(external_path, load_external)
        if self.config["variant"] == "sprn":
            if networks["sprn"] is None:
                raise MissingWeightsError(
                    f"{set_path} has no SPRN; train it with `facedeid train eeae --attributes "
                    f"{code} --sprn-minutes N`")
            self.network = PrivacyRemovalNetwork(networks["sprn"], None)
        else:
            self.network = PrivacyRemovalNetwork(external, networks["internal"])
        self.attribute_names = list(payload["attribute_names"])
        self.trained_with = tuple(payload.get("trained_with") or ("faceres",))
        self.aligned_size = int(external.config.image_size)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        return self.apply_batch([crop], [context])[0]

    def apply_batch(self, crops: list[FaceCrop], contexts: list[FaceContext]) -> list[np.ndarray]:
        if not crops:
            return []
        for crop in crops:
            if crop.pixels.shape[:2] != (self.aligned_size, self.aligned_size):
                raise ValueError(f"eeae needs a {self.aligned_size}x{self.aligned_size} aligned "
                                 f"crop, got {crop.pixels.shape[:2]}")
        return list(self.network.anonymize(np.stack([crop.pixels for crop in crops]),
                                           self.config["batch_size"]))
