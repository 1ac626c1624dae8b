"""k-Same-M: k-Same on an active appearance model (shape + texture) instead of pixels.

Gross, Airoldi, Malin & Sweeney, "Integrating Utility into Face De-Identification", Privacy
Enhancing Technologies (PET) 2005, LNCS 3856, section 5 (k-Same-M). k-Same-Pixel averages
pixels of faces that are not in correspondence, so the average is a blurred ghost with doubled
eyes and mouths. k-Same-M first puts every face into correspondence with an active appearance
model (Cootes, Edwards & Taylor, ECCV 1998): the face is a *shape* (landmark positions) plus a
*texture* (the pixels warped onto the model's mean shape). Averaging shape and texture
coefficients separately gives a sharp face with one pair of eyes.

The steps, as implemented here on aligned crops (:class:`facedeid.alignment.FaceAligner`):

1. **Shape.** dlib's 68 landmarks on the crop (:class:`~facedeid.detection.dlib_models.
   DlibLandmarker`). dlib is unreliable on a 64-px face, so the crop is upscaled to at least
   :data:`LANDMARK_SIDE` pixels first, and the box handed to the predictor comes from dlib's own
   HOG face detector on that upscaled crop (the predictor was trained on those boxes; a
   CenterFace box is taller and shifts the jaw points). No HOG face overlapping the aligned
   face's place, or landmarks far from the aligned template, means "not fitted" (blank crops,
   noise, profiles): such a face never enters the model.
2. **Texture.** The crop warped from its own shape to the mean shape with a piecewise-affine warp
   over the Delaunay triangulation of the mean shape (the same triangles for every shape). The
   warp is OpenCV's ``remap`` with per-pixel maps built from precomputed barycentric coordinates,
   not scikit-image's ``PiecewiseAffineTransform``: the mean frame is fixed, so its triangle
   lookup is computed once and each face costs one matrix product and one ``remap`` (0.3 ms
   per 64-px face, measured; scikit-image's estimate + warp took 146 ms per face, so 2,000
   crops would take 5 minutes instead of under a second). Rendering onto a new shape
   rasterises its triangles with ``cv2.fillConvexPoly`` (2 ms per face).
   Texture vector = the mean-frame pixels inside the mean shape's convex hull (RGB, no
   gain/bias lighting normalisation: the output needs the colours).
3. **Models.** PCA (:class:`~facedeid.methods.ksame.EigenFaces`) of shapes and of textures,
   fitted on a gallery of *other* people. No Procrustes step: the crops are already
   similarity-aligned to one template, which is what Procrustes would do. The combined
   coefficient vector is ``[r * b_shape, b_texture]`` with ``r**2 = total texture variance /
   total shape variance`` of the gallery coefficients (Cootes et al.'s ``W_s = r I``), so a
   pixel of shape change weighs as much as the typical texture change; no third PCA on the
   combined vector (averaging is linear, it would not change the result).
4. **k-Same.** Newton's k-Same rule (:func:`~facedeid.methods.ksame.k_same_clusters`) on the
   combined coefficients; each cluster's shape and texture coefficients are averaged,
   reconstructed, and the texture warped from the mean shape to the averaged shape.
5. **Outside the face.** The model covers the convex hull of the 68 points (brows to chin);
   forehead, hair and background would otherwise keep the original pixels and leak identity.
   There the output is the k-Same-Pixel average of the *same* k members' aligned crops, so no
   pixel of the output is an original pixel. The seam is feathered over two pixels between two
   averages, never towards the original.

Two uses, as in :mod:`facedeid.methods.ksame`:

* dataset level, where Newton's guarantee (every output shared by k..2k-1 faces, rank-1 <= 1/k
  against the originals) holds: :func:`k_same_m`;
* per image, the registered method ``ksame_m``: the face's coefficients are averaged with its
  k-1 nearest gallery coefficients (default gallery: the 160 train people of celeba-id200's
  identity-disjoint split). One image alone holds no 1/k guarantee (the output keeps a 1/k
  share of the face). A face the landmarks cannot be fitted to falls back to box-level
  k-Same-Pixel with the same gallery, and says so in ``context.notes`` (counted in the sidecar).

Departures from the paper: Gross et al. fit an AAM by iterative search; here the shape comes
from dlib's regression-tree landmarks and the texture is read off directly (no search), which
is the usual modern shortcut and needs no trained AAM.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from ..alignment import FaceAligner, FaceCrop
from ..errors import InvalidInputError, InvalidParameterError
from .base import DeidMethod, FaceContext, Param
from .ksame import EigenFaces, fit_gallery, k_same_clusters, k_same_pixel, k_same_with_gallery, \
    nearest_in_gallery, require_gallery_size
from .registry import register

#: Crops are upscaled to at least this side before dlib looks at them: its HOG window is 80 px
#: and its landmark regressor was trained on faces of 100+ px; at 64 px both miss faces.
LANDMARK_SIDE = 192
#: A fit is refused when a canonical point (eye centres, nose tip, mouth corners) lands farther
#: than this fraction of the crop side from the aligned template: the crop was aligned on
#: those points, so a good fit puts them there.
MAX_TEMPLATE_OFFSET = 0.12
#: The HOG detector's score threshold: slightly below dlib's default 0 so low-contrast real
#: faces still count, well above what noise and blank crops reach.
HOG_THRESHOLD = -0.3
SEAM_FEATHER_PX = 2.0


# ---------------------------------------------------------------------------------------------
# Landmarks (shape)

@lru_cache(maxsize=1)
def _dlib_face_models():
    """dlib's HOG frontal detector and 68-point predictor, loaded once per process."""
    import dlib

    from ..detection.dlib_models import DlibLandmarker
    return dlib.get_frontal_face_detector(), DlibLandmarker(68)


def _canonical_points(points: np.ndarray) -> np.ndarray:
    """``(68, 2)`` dlib points -> ``(5, 2)`` eye centres, nose tip, mouth corners (the
    template's order)."""
    return np.stack([points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30],
                     points[48], points[54]])


def _box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fit_landmarks(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib's 68 landmarks on ``(N, S, S, 3) uint8`` aligned crops (``FaceAligner(S)``).

    Returns:
        ``(N, 68, 2) float32`` points in crop pixels (NaN where not fitted) and an ``(N,)`` bool
        mask of faces fitted: dlib's HOG detector finds a face at the aligned face's place on
        the upscaled crop, and the fitted eyes, nose and mouth lie near the aligned template.
    """
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2]:
        raise InvalidInputError(f"expected (N, S, S, 3) aligned faces, got shape {faces.shape}")
    size = faces.shape[1]
    aligner = FaceAligner(size)
    detector, landmarker = _dlib_face_models()
    scale = max(1, int(np.ceil(LANDMARK_SIDE / size)))
    expected_box = np.array([18.0, 28.0, 94.0, 112.0]) * aligner.face_fraction * size / 112.0 \
        + size * (1 - aligner.face_fraction) / 2  # the template's face box, in crop pixels
    points = np.full((len(faces), 68, 2), np.nan, np.float32)
    fitted = np.zeros(len(faces), bool)
    for index, face in enumerate(faces):
        large = cv2.resize(np.ascontiguousarray(face, dtype=np.uint8), (size * scale,) * 2,
                           interpolation=cv2.INTER_CUBIC)
        rects, _, _ = detector.run(large, 0, HOG_THRESHOLD)
        boxes = [np.array([r.left(), r.top(), r.right(), r.bottom()], float) / scale for r in rects]
        boxes = [b for b in boxes if _box_overlap(b, expected_box) >= 0.4]
        if not boxes:
            continue
        best = max(boxes, key=lambda b: _box_overlap(b, expected_box))
        found = (landmarker.raw_points(large, best * scale) + 0.5) / scale - 0.5
        offset = np.linalg.norm(_canonical_points(found) - aligner.template, axis=1).max()
        if offset <= MAX_TEMPLATE_OFFSET * size:
            points[index], fitted[index] = found, True
    return points, fitted


# ---------------------------------------------------------------------------------------------
# Piecewise-affine warping over a fixed triangulation

def _barycentric_lookup(shape: np.ndarray, triangles: np.ndarray, size: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of an ``size x size`` grid: the triangle of ``shape`` holding it (-1
    outside the mesh) and its ``(3,)`` barycentric coordinates in that triangle.

    Triangles are rasterised with OpenCV (sub-pixel vertices) into a label image, then each
    labelled pixel gets its barycentric coordinates from its own triangle: linear in pixels,
    where testing every pixel against every triangle was 60 ms per 64-px face.
    """
    corners = shape[triangles].astype(np.float64)                              # (T, 3, 2)
    label = np.full((size, size), -1, np.int32)
    subpixel_bits = 4
    for index, triangle in enumerate(corners):
        cv2.fillConvexPoly(label, np.rint(triangle * (1 << subpixel_bits)).astype(np.int32),
                           int(index), lineType=cv2.LINE_8, shift=subpixel_bits)
    label = label.ravel()
    weights = np.zeros((size * size, 3))
    covered = np.flatnonzero(label >= 0)
    edges = np.stack([corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]], axis=2)
    usable = np.abs(np.linalg.det(edges)) > 1e-9                               # degenerate: skip
    inverse = np.zeros_like(edges)
    inverse[usable] = np.linalg.inv(edges[usable])
    covered = covered[usable[label[covered]]]
    label[(label >= 0) & ~usable[np.maximum(label, 0)]] = -1
    pixels = np.stack([covered % size, covered // size], axis=1).astype(np.float64)
    owner = label[covered]
    second_third = np.einsum("pij,pj->pi", inverse[owner], pixels - corners[owner, 0])
    weights[covered] = np.concatenate([1 - second_third.sum(axis=1, keepdims=True),
                                       second_third], axis=1)
    return label, weights


def _sample(image: np.ndarray, coordinates: np.ndarray, size: int) -> np.ndarray:
    """``image`` read at ``(size*size, 2)`` x/y ``coordinates`` (bilinear, edge-replicated)."""
    grid = coordinates.reshape(size, size, 2).astype(np.float32)
    return cv2.remap(image, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------------------------------------
# The appearance model

class AppearanceModel:
    """Shape and texture PCA of aligned faces, in the mean-shape frame of ``FaceAligner(S)``.

    Build with :meth:`fit`. Codes are the combined vectors ``[r * b_shape, b_texture]``
    (``(N, D) float64``) that k-Same compares and averages; :meth:`render` turns codes back
    into faces.

    Attributes:
        size: side S of the aligned crops it works on.
        gallery_faces: ``(G, S, S, 3) uint8`` the fitted gallery faces (unfitted ones dropped).
        gallery_codes: ``(G, D)`` their codes.
        shape_weight: r, the factor on the shape coefficients.
    """

    def __init__(self, faces: np.ndarray, points: np.ndarray, shape_components: int,
                 texture_components: int):
        self.size = faces.shape[1]
        shapes = points.reshape(len(points), -1).astype(np.float64)
        self.mean_shape = shapes.mean(axis=0).reshape(68, 2)
        from scipy.spatial import Delaunay
        self.triangles = Delaunay(self.mean_shape).simplices
        triangle, weights = _barycentric_lookup(self.mean_shape, self.triangles, self.size)
        self._frame_triangle, self._frame_weights = triangle, weights
        self.frame_inside = (triangle >= 0).reshape(self.size, self.size)
        # every frame pixel -> nearest pixel inside the hull, so bilinear reads at the hull's
        # edge during rendering see face colours rather than black
        _, labels = cv2.distanceTransformWithLabels(
            (~self.frame_inside).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        inside_flat = np.flatnonzero(self.frame_inside.ravel())
        label_of_inside = labels.ravel()[inside_flat]
        lookup = np.zeros(labels.max() + 1, np.int64)
        lookup[label_of_inside] = np.arange(len(inside_flat))
        self._nearest_inside = lookup[labels.ravel()]
        textures = self.textures(faces, points)
        self.shape_pca = EigenFaces(shapes, shape_components)
        self.texture_pca = EigenFaces(textures, texture_components)
        shape_variance = self.shape_pca.project(shapes).var(axis=0).sum()
        texture_variance = self.texture_pca.project(textures).var(axis=0).sum()
        # r = 1 when either part does not vary (a gallery of copies): nothing to balance
        self.shape_weight = float(np.sqrt(texture_variance / shape_variance)) \
            if min(shape_variance, texture_variance) > 1e-9 else 1.0
        self.gallery_faces = np.asarray(faces, np.uint8)
        self.gallery_codes = self._codes(shapes, textures)

    @classmethod
    def fit(cls, faces: np.ndarray, shape_components: int = 20, texture_components: int = 60
            ) -> "AppearanceModel":
        """Fit on ``(G, S, S, 3) uint8`` aligned faces of other people; faces whose landmarks
        cannot be fitted are left out. PCA keeps at most ``G - 1`` components."""
        points, fitted = fit_landmarks(faces)
        if fitted.sum() < 2:
            raise InvalidParameterError(
                f"the appearance model needs at least two faces whose landmarks can be fitted; "
                f"{int(fitted.sum())} of {len(faces)} gallery faces could be")
        return cls(np.asarray(faces)[fitted], points[fitted], shape_components, texture_components)

    @staticmethod
    def landmarks(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :func:`fit_landmarks`."""
        return fit_landmarks(faces)

    def textures(self, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
        """``(N, P, 3) uint8`` texture vectors: each face warped from its ``(68, 2)`` points to
        the mean shape, the P pixels inside the mean shape's hull."""
        inside = np.flatnonzero(self.frame_inside.ravel())
        triangle, weights = self._frame_triangle[inside], self._frame_weights[inside]
        out = np.empty((len(faces), len(inside), 3), np.uint8)
        full = np.zeros((self.size * self.size, 2))
        for index, (face, shape) in enumerate(zip(faces, points)):
            full[inside] = np.einsum("pk,pkj->pj", weights, shape[self.triangles[triangle]])
            out[index] = _sample(face, full, self.size).reshape(-1, 3)[inside]
        return out

    def _codes(self, shapes: np.ndarray, textures: np.ndarray) -> np.ndarray:
        return np.concatenate([self.shape_weight * self.shape_pca.project(shapes),
                               self.texture_pca.project(textures)], axis=1)

    def encode(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, S, S, 3) uint8`` aligned faces -> ``(N, D)`` codes (NaN rows where the
        landmarks could not be fitted) and the ``(N,)`` fitted mask."""
        faces = np.asarray(faces)
        if faces.shape[1:] != (self.size, self.size, 3):
            raise InvalidInputError(f"this appearance model works on ({self.size}, {self.size}, 3)"
                                    f" aligned crops, got {faces.shape[1:]}")
        points, fitted = fit_landmarks(faces)
        codes = np.full((len(faces), self.gallery_codes.shape[1]), np.nan)
        if fitted.any():
            shapes = points[fitted].reshape(int(fitted.sum()), -1).astype(np.float64)
            codes[fitted] = self._codes(shapes, self.textures(faces[fitted], points[fitted]))
        return codes, fitted

    def render(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, D)`` codes -> ``(N, S, S, 3) uint8`` faces drawn in their shapes, and
        ``(N, S, S) bool`` masks of the pixels inside each shape's hull (black outside)."""
        codes = np.atleast_2d(codes)
        n_shape = self.shape_pca.basis.shape[0]
        shapes = (codes[:, :n_shape] / self.shape_weight) @ self.shape_pca.basis \
            + self.shape_pca.mean
        textures = self.texture_pca.reconstruct(codes[:, n_shape:]).reshape(len(codes), -1, 3)
        faces = np.zeros((len(codes), self.size, self.size, 3), np.uint8)
        drawn = np.zeros((len(codes), self.size, self.size), bool)
        for index, (shape, texture) in enumerate(zip(shapes.reshape(-1, 68, 2), textures)):
            frame = texture[self._nearest_inside].reshape(self.size, self.size, 3)
            triangle, weights = _barycentric_lookup(shape, self.triangles, self.size)
            inside = triangle >= 0
            source = np.zeros((self.size * self.size, 2))
            source[inside] = np.einsum("pk,pkj->pj", weights[inside],
                                       self.mean_shape[self.triangles[triangle[inside]]])
            faces[index] = _sample(frame, source, self.size) * inside.reshape(self.size, self.size,
                                                                              1)
            drawn[index] = inside.reshape(self.size, self.size)
        return faces, drawn


def compose(rendered: np.ndarray, drawn: np.ndarray, surround: np.ndarray) -> np.ndarray:
    """The model's face where it was drawn, ``surround`` (an average of the same members, never
    an original) elsewhere, feathered over :data:`SEAM_FEATHER_PX` inside the drawn region."""
    weight = cv2.distanceTransform(drawn.astype(np.uint8), cv2.DIST_L2, 3)
    weight = np.clip(weight / SEAM_FEATHER_PX, 0.0, 1.0)[..., None]
    blended = rendered.astype(np.float64) * weight + surround.astype(np.float64) * (1 - weight)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _pixel_average(faces: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(faces.astype(np.float64).mean(axis=0)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Dataset level

def k_same_m(aligned: np.ndarray, k: int, model: AppearanceModel | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Dataset-level k-Same-M on ``(N, S, S, 3) uint8`` aligned faces (one per person).

    Clusters are Newton's k-Same rule on the appearance codes; every member of a cluster gets
    the same output (the averaged face, surrounded by the members' pixel average).

    Args:
        model: a fitted :class:`AppearanceModel` of size S; ``None`` fits one on the set itself
            (as :func:`~facedeid.methods.ksame.k_same_eigen` does).

    Returns:
        The outputs and an ``(N,)`` bool mask of faces given k-Same-Pixel instead: those whose
        landmarks could not be fitted, clustered among themselves with
        :func:`~facedeid.methods.ksame.k_same_pixel`. When fewer than k are unfitted, their
        nearest fitted faces (pixel distance to their mean) join them to make one cluster of
        k, so every output is still shared by at least k faces; when fewer than k fitted faces
        remain, the whole set is k-Same-Pixel.
    """
    aligned = np.asarray(aligned)
    if aligned.ndim != 4 or aligned.shape[-1] != 3 or aligned.shape[1] != aligned.shape[2]:
        raise InvalidInputError(f"expected (N, S, S, 3) aligned faces, got shape {aligned.shape}")
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise InvalidParameterError(f"k must be an integer >= 2 (k = 1 changes nothing), got {k!r}")
    if k > len(aligned):
        raise InvalidParameterError(f"k = {k} is larger than the set of {len(aligned)} faces")
    aligned = aligned.astype(np.uint8)
    if model is not None:
        codes, fitted = model.encode(aligned)
    else:
        codes, (points, fitted) = None, fit_landmarks(aligned)
    fell_back = ~fitted
    if 0 < fell_back.sum() < k:  # too few to hide among themselves: borrow the nearest faces
        flat = aligned.reshape(len(aligned), -1).astype(np.float64)
        centre = flat[fell_back].mean(axis=0)
        borrowed = [i for i in np.argsort(((flat - centre) ** 2).sum(axis=1), kind="stable")
                    if fitted[i]][:k - int(fell_back.sum())]
        fell_back[borrowed] = True
    if len(aligned) - fell_back.sum() < k:
        fell_back[:] = True
    out = np.empty_like(aligned)
    if fell_back.any():
        out[fell_back] = k_same_pixel(aligned[fell_back], min(k, int(fell_back.sum())))
    kept = np.flatnonzero(~fell_back)
    if len(kept):
        if model is None:
            model = AppearanceModel(aligned[kept], points[kept], shape_components=20,
                                    texture_components=60)
            codes = np.full((len(aligned), model.gallery_codes.shape[1]), np.nan)
            codes[kept] = model.gallery_codes
        for members in k_same_clusters(codes[kept], k):
            members = kept[members]
            rendered, drawn = model.render(codes[members].mean(axis=0, keepdims=True))
            out[members] = compose(rendered[0], drawn[0], _pixel_average(aligned[members]))
    return out, fell_back


# ---------------------------------------------------------------------------------------------
# Per-image method with a fitted gallery

@lru_cache(maxsize=4)
def fit_gallery_model(gallery: str, size: int) -> AppearanceModel:
    """The appearance model of :func:`~facedeid.methods.ksame.fit_gallery`'s faces, fitted
    once per process and gallery (landmarking 160 faces takes about a second)."""
    return AppearanceModel.fit(fit_gallery(gallery, size))


@register
class KSameM(DeidMethod):
    """Per-image k-Same-M: the face's shape and texture averaged with k-1 gallery faces'."""

    name = "ksame_m"
    summary = ("k-Same-M: average shape and texture of k faces in an appearance model "
               "(sharp, no ghosting)")
    reference = ("Gross, Airoldi, Malin & Sweeney, PET 2005 (k-Same-M); Newton et al., "
                 "IEEE TKDE 2005 (k-Same); Cootes et al., ECCV 1998 (AAM)")
    space = "aligned"
    aligned_size = 64  # dlib fits 30/30 CelebA test faces at 64 px once upscaled to 192
    params = (
        Param("k", int, 10, "identities averaged (the input and its k-1 nearest gallery faces "
              "in appearance-model coefficients)", minimum=2, maximum=1000, safe_min=5),
        Param("gallery", str, "", "folder of face photos, one per person; empty = the 160 train "
              "people of celeba-id200's identity-disjoint split when ../shared/data exists"),
    )

    def _model(self) -> AppearanceModel:
        if not hasattr(self, "_fitted_model"):
            k = self.config["k"]
            gallery = fit_gallery(self.config["gallery"], self.aligned_size)
            require_gallery_size(k, len(gallery))
            model = fit_gallery_model(self.config["gallery"], self.aligned_size)
            require_gallery_size(k, len(model.gallery_faces),
                                 f" whose landmarks could be fitted (of {len(gallery)})")
            self._fitted_model = model
        return self._fitted_model

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        return self.apply_batch([crop], [context])[0]

    def apply_batch(self, crops: list[FaceCrop], contexts: list[FaceContext]) -> list[np.ndarray]:
        if not crops:
            return []
        model = self._model()
        for crop in crops:
            if crop.pixels.shape != (model.size, model.size, 3):
                raise InvalidInputError(f"ksame_m expects ({model.size}, {model.size}, 3) "
                                        f"aligned crops, got {crop.pixels.shape}")
        faces = np.stack([crop.pixels for crop in crops])
        codes, fitted = model.encode(faces)
        k = self.config["k"]
        outputs = []
        for face, code, is_fitted, context in zip(faces, codes, fitted, contexts):
            if not is_fitted:
                context.notes.update(
                    fallback="ksame:variant=pixel",
                    reason="dlib's 68 landmarks could not be fitted to this face (no frontal "
                           "face found on the aligned crop); averaged pixels with the gallery")
                outputs.append(k_same_with_gallery(face, model.gallery_faces, k))
                continue
            nearest = nearest_in_gallery(model.gallery_codes, code, k - 1)
            mean = np.concatenate([code[None], model.gallery_codes[nearest]]).mean(axis=0)
            rendered, drawn = model.render(mean[None])
            surround = _pixel_average(np.concatenate([face[None], model.gallery_faces[nearest]]))
            outputs.append(compose(rendered[0], drawn[0], surround))
        return outputs
