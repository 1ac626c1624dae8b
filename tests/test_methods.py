"""Each classic operator does what its equation says, inside the face and nowhere else."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from facedeid.alignment import box_crop
from facedeid.errors import InvalidParameterError, UnknownMethodError
from facedeid.methods import FaceContext, available_methods, create_method
from facedeid.methods.classic import block_means, eye_band_mask
from facedeid.pipeline import Anonymizer

CLASSIC = ["blindfold", "mosaic", "laplace", "gaussian_noise", "blur", "pixelate", "mask", "cartoon"]


@pytest.fixture(scope="module")
def run(astronaut, astronaut_face, centerface):
    """Anonymize the astronaut with a method; return (output, coverage)."""
    def _run(method, **params):
        result = Anonymizer(method, params, detector=centerface, seed=1).anonymize(
            astronaut, faces=[astronaut_face])
        return result.image, result.coverage
    return _run


def test_every_classic_operator_is_registered():
    assert set(CLASSIC) <= set(available_methods())


@pytest.mark.parametrize("name", CLASSIC)
def test_background_is_untouched_and_face_changed(name, run, astronaut):
    output, coverage = run(name)
    outside = coverage == 0
    assert np.array_equal(output[outside], astronaut[outside])
    inside = coverage == 1
    changed = np.any(output != astronaut, axis=2)
    assert changed[inside].mean() > (0.05 if name == "blindfold" else 0.5)


def test_mosaic_blocks_are_constant_inside_the_face(run, astronaut, astronaut_face):
    output, coverage = run("mosaic", block_size=8)
    crop, (x0, y0, _, _) = box_crop(astronaut, astronaut_face)
    # Blocks are anchored at the crop's origin; check every block fully inside the region.
    checked = 0
    for by in range(y0, y0 + crop.pixels.shape[0] - 8, 8):
        for bx in range(x0, x0 + crop.pixels.shape[1] - 8, 8):
            if coverage[by:by + 8, bx:bx + 8].min() == 1:
                block = output[by:by + 8, bx:bx + 8].reshape(-1, 3)
                assert (block == block[0]).all()
                expected = np.rint(astronaut[by:by + 8, bx:bx + 8].reshape(-1, 3).mean(axis=0))
                assert np.abs(block[0].astype(int) - expected).max() <= 1  # g(x): block mean
                checked += 1
    assert checked > 50


def test_block_means_handles_partial_border_blocks():
    pixels = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    out = block_means(pixels, 4)
    assert out.shape == pixels.shape
    assert (out[4:, 4:] == np.rint(pixels[4:, 4:].reshape(-1, 3).mean(0))).all()


def test_blindfold_zeroes_exactly_the_eye_band(run, astronaut, astronaut_face):
    output, _ = run("blindfold", height=0.6, extend=0.6)
    band = eye_band_mask(astronaut.shape[:2], astronaut_face.landmarks, 0.6, 0.6)
    expected = astronaut.copy()
    expected[band] = 0
    assert band.sum() > 500
    assert np.array_equal(output, expected)
    # the band covers both eye centres
    for eye in astronaut_face.landmarks[:2]:
        assert band[int(round(eye[1])), int(round(eye[0]))]


def test_laplace_noise_has_the_requested_scale(astronaut, astronaut_face):
    method = create_method("laplace", lam=0.02, mu=0.0, allow_weak=True)  # weak: scale test only
    crop, _ = box_crop(astronaut, astronaut_face)
    crop.pixels[...] = 128  # mid-grey: no clipping, so the noise is visible as is
    noisy = method.apply(crop, FaceContext(rng=np.random.default_rng(0)))
    noise = (noisy.astype(float) - 128).ravel()
    # Rounded to integers; a KS test against the continuous law would reject for rounding alone,
    # so compare the fitted scale (the MLE of a Laplace scale is the mean absolute deviation).
    assert abs(np.abs(noise).mean() - 0.02 * 255) < 0.3
    assert abs(noise.mean()) < 0.2


def test_gaussian_noise_has_the_requested_sigma(astronaut, astronaut_face):
    crop, _ = box_crop(astronaut, astronaut_face)
    crop.pixels[...] = 128
    noisy = create_method("gaussian_noise", sigma=10, allow_weak=True).apply(  # weak: scale test
        crop, FaceContext(np.random.default_rng(0)))
    noise = noisy.astype(float) - 128
    assert abs(noise.std() - 10) < 0.5
    assert stats.normaltest(noise.ravel()).pvalue > 1e-4 or abs(stats.skew(noise.ravel())) < 0.05


def test_seeded_noise_is_reproducible_and_unseeded_is_not(astronaut, astronaut_face):
    def once(seed):
        return Anonymizer("laplace", seed=seed, detector="centerface").anonymize(
            astronaut, faces=[astronaut_face]).image
    assert np.array_equal(once(3), once(3))
    assert not np.array_equal(once(None), once(None))


def test_blur_removes_detail_in_the_face(run, astronaut):
    output, coverage = run("blur")
    inside = coverage == 1
    gradient = lambda img: np.abs(np.diff(img.astype(float), axis=1))[inside[:, 1:]].mean()  # noqa: E731
    assert gradient(output) < gradient(astronaut) / 3


def test_pixelate_leaves_few_cells(run):
    output, coverage = run("pixelate", size=6)
    colours = np.unique(output[coverage == 1].reshape(-1, 3), axis=0)
    assert len(colours) < 120  # 6 cells across a face of ~90 px, in a ~117 px region


def test_mask_fills_with_colour(run):
    output, coverage = run("mask", color="10,20,30")
    assert (output[coverage == 1] == [10, 20, 30]).all()


def test_cartoon_flattens_colours(run, astronaut):
    output, coverage = run("cartoon", levels=4)
    inside = coverage == 1
    assert len(np.unique(output[inside].reshape(-1, 3), axis=0)) < \
        len(np.unique(astronaut[inside].reshape(-1, 3), axis=0)) / 10


def test_parameters_are_validated():
    with pytest.raises(InvalidParameterError, match="block_size"):
        create_method("mosaic", block_size=-1)
    with pytest.raises(InvalidParameterError, match="no parameter"):
        create_method("mosaic", blok_size=4)
    with pytest.raises(InvalidParameterError, match="expects int"):
        create_method("mosaic", block_size="big")
    with pytest.raises(InvalidParameterError):
        create_method("mask", color="1,2")
    with pytest.raises(UnknownMethodError, match="mosaic"):
        create_method("no-such-method")
    assert create_method("mosaic", block_size="12").config["block_size"] == 12
    assert create_method("blur", kernel_size=10).config["kernel_size"] == 11


def test_expand_below_one_is_refused():
    with pytest.raises(ValueError, match="untouched"):
        Anonymizer("mosaic", expand=0.8)


def test_mosaic_blocks_grow_with_the_face(astronaut, astronaut_face):
    big = np.kron(astronaut, np.ones((8, 8, 1), np.uint8))  # each pixel an 8x8 block already
    face = astronaut_face.__class__(box=astronaut_face.box * 8, landmarks=astronaut_face.landmarks * 8)
    result = Anonymizer("mosaic").anonymize(big, faces=[face])
    inside = result.coverage == 1
    # a fixed 8-px mosaic would change nothing here; the automatic block size must
    assert np.abs(result.image.astype(int) - big)[inside].mean() > 10
