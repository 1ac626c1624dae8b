"""Private-Encoder as a registered method: replace the face by a generated one with a moved identity.

Seed 003 (Private-Encoder, §3, Eq. 1-4): the aligned face is encoded into the latent space of the
project's face generator, each latent code is rewritten by its privacy embedding network, and
the generator draws the result. ``beta`` is the paper's privacy regularizer, an input of the one
shipped model: the faceres identity similarity between input and output the model was trained
to hit (0 = as different as possible, 1 = the same person). The output keeps pose, expression
and colouring; it is colour-matched to the input face (mean and spread in Lab inside the
paste-back ellipse) so the blend has no visible seam.

The method is deterministic: one input gives one output, so a face tracked through a video keeps
one replacement identity without a per-track seed.

Faces the model was not trained for are covered by the pipeline's classic fallback
(``pixelate``) instead, and the face's sidecar entry says so (``method_notes``):

* tiny faces (narrower than :data:`MIN_FACE_PIXELS` in the image): a 64-px model upsampling a
  20-px face invents a face that has nothing to do with the input's pose;
* unaligned faces, whose landmarks sit far from the aligned template
  (:data:`MAX_LANDMARK_RESIDUAL`), and profile faces, whose nose sits far off the eye midpoint
  (:data:`MAX_YAW_RATIO`): the model has only seen roughly frontal aligned faces.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..alignment import FaceAligner, FaceCrop
from .base import FALLBACK_METHOD, DeidMethod, FaceContext, Param, load_weights_once
from .registry import create_method, register

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "private_encoder.pt"
#: narrower faces (box width in image pixels) go to the fallback operator
MIN_FACE_PIXELS = 24
#: mean landmark distance from the aligned template, as a fraction of the crop side, beyond
#: which a face counts as unaligned (CelebA test photos: 99th percentile 0.044, max 0.053)
MAX_LANDMARK_RESIDUAL = 0.06
#: nose offset from the eye midpoint along the eye line, in eye distances, beyond which a face
#: counts as profile (CelebA test photos: median 0.09, 99th percentile 0.51, max 0.66)
MAX_YAW_RATIO = 0.6


def face_problem(crop: FaceCrop, template: np.ndarray) -> str | None:
    """Why the model should not draw this face (``None`` when it may).

    Args:
        template: the aligner's five canonical points for the crop size.
    """
    # crop.box holds the detected box's corners in crop coordinates, which a rotated alignment
    # turns; mapped back to the image they are the detector's corners again.
    corners = np.asarray(crop.box, np.float32).reshape(2, 2) @ crop.to_image[:, :2].T \
        + crop.to_image[:, 2]
    width = float(abs(corners[1, 0] - corners[0, 0]))
    if width < MIN_FACE_PIXELS:
        return f"tiny face ({width:.0f} px wide < {MIN_FACE_PIXELS})"
    points = np.asarray(crop.landmarks, dtype=np.float32)
    if points.shape != template.shape or not np.isfinite(points).all():
        return "landmarks incomplete"
    residual = float(np.linalg.norm(points - template, axis=1).mean()) / crop.pixels.shape[0]
    if residual > MAX_LANDMARK_RESIDUAL:
        return f"unaligned face (landmark residual {residual:.3f} > {MAX_LANDMARK_RESIDUAL})"
    yaw = yaw_ratio(points)
    if yaw > MAX_YAW_RATIO:
        return f"profile face (yaw ratio {yaw:.2f} > {MAX_YAW_RATIO})"
    return None


def yaw_ratio(landmarks: np.ndarray) -> float:
    """How far the nose sits off the eye midpoint along the eye line, in eye distances (0 for
    a frontal face, growing as the head turns; unchanged by the similarity alignment)."""
    left_eye, right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    eye_line = right_eye - left_eye
    eye_distance = float(np.linalg.norm(eye_line))
    if eye_distance < 1e-6:
        return float("inf")
    offset = float(np.dot(nose - (left_eye + right_eye) / 2, eye_line / eye_distance))
    return abs(offset) / eye_distance


def match_colours(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift and scale each Lab channel of ``generated`` to the original's mean and spread
    inside ``mask`` (the paste-back region), so skin tone and lighting continue across the seam."""
    inside = mask > 0.5
    if inside.sum() < 16:
        return generated
    source = cv2.cvtColor(generated, cv2.COLOR_RGB2LAB).astype(np.float32)
    target = cv2.cvtColor(original, cv2.COLOR_RGB2LAB).astype(np.float32)
    for channel in range(3):
        src, dst = source[..., channel][inside], target[..., channel][inside]
        spread = dst.std() / max(src.std(), 1e-3)
        source[..., channel] = (source[..., channel] - src.mean()) * min(spread, 2.0) + dst.mean()
    return cv2.cvtColor(np.clip(source, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def route_faces(method: DeidMethod, crops: list[FaceCrop], contexts: list[FaceContext]
                ) -> tuple[list[np.ndarray | None], list[int]]:
    """Which faces a 64-px generator method may draw, and the fallback's output for the rest.

    ``method`` carries ``aligned_size``, ``template`` (the aligner's points) and ``fallback``.
    Returns the outputs list (filled where the fallback ran, the reason in the face's notes)
    and the indices left for the method's own model.
    """
    outputs: list[np.ndarray | None] = [None] * len(crops)
    drawable = []
    for index, (crop, context) in enumerate(zip(crops, contexts)):
        if crop.pixels.shape[:2] != (method.aligned_size, method.aligned_size):
            raise ValueError(f"{method.name} needs a {method.aligned_size}x{method.aligned_size} "
                             f"aligned crop, got {crop.pixels.shape[:2]}")
        problem = face_problem(crop, method.template)
        if problem is None:
            drawable.append(index)
            continue
        context.notes.update(fallback=FALLBACK_METHOD[0], reason=problem)
        outputs[index] = method.fallback.apply(crop, context)
    return outputs, drawable


@register
class PrivateEncoderMethod(DeidMethod):
    """Encode the face into the generator's latent space with identity similarity ``beta``."""

    name = "private_encoder"
    summary = ("Private-Encoder: a generated face with pose and expression kept and the identity "
               "moved by the privacy knob beta (seed 003)")
    reference = "Private-Encoder (seed 003) §3, Eq. 1-4; beta is a model input here"
    space = "aligned"
    aligned_size = 64
    # The generated face is the protection: pixelating the box corners around it would frame
    # every output in a mosaic. The aligned crop spans the whole face (FaceAligner, 80 %).
    cover_whole_box = False
    trained_with = ("faceres",)
    params = (
        Param("beta", float, 0.2, "identity similarity to the input the model aims at "
              "(0 = most different, 1 = same person)", minimum=0.0, maximum=1.0, safe_max=0.3),
        Param("checkpoint", str, "", "Private-Encoder checkpoint (.pt); empty = the shipped "
              "private_encoder.pt"),
        Param("batch_size", int, 32, "faces per network call", minimum=1, maximum=4096),
    )

    def validate(self) -> None:
        path = Path(self.config["checkpoint"]) if self.config["checkpoint"] else DEFAULT_CHECKPOINT
        from ..models.private_encoder import load_private_face_model
        self.model, payload = load_weights_once(path, load_private_face_model)
        self.checkpoint_path = path
        self.aligned_size = int(self.model.generator.config.image_size)
        self.trained_with = tuple(payload.get("trained_with") or ("faceres",))
        self.template = FaceAligner(self.aligned_size).template
        self.fallback = create_method(FALLBACK_METHOD[0], **FALLBACK_METHOD[1])

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        return self.apply_batch([crop], [context])[0]

    def apply_batch(self, crops: list[FaceCrop], contexts: list[FaceContext]) -> list[np.ndarray]:
        outputs, drawable = route_faces(self, crops, contexts)
        if drawable:
            generated = self.model.anonymize(np.stack([crops[i].pixels for i in drawable]),
                                             self.config["beta"], self.config["batch_size"])
            for index, face in zip(drawable, generated):
                outputs[index] = match_colours(face, crops[index].pixels, crops[index].mask)
        return outputs
