"""DP-Pix / DP-Blur: the noise has the distribution the privacy proof assumes, and bad budgets fail.

The ε-DP guarantee of DP-Pix rests entirely on the cell noise being Laplace(0, 255·m·C/(b²·ε));
DP-Blur's on it being N(0, σ²) with σ from the Gaussian mechanism. The KS tests below compare
many draws with those exact distributions, and check that a 15 % wrong scale is rejected (so
they can fail).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.stats import norm

from facedeid.errors import InvalidParameterError
from facedeid.methods import FaceContext, create_method
from facedeid.methods.dp_obfuscation import (cell_means, dp_blur_noisy_cells, dp_pix,
                                             dp_pix_noisy_cells, gaussian_sigma, l2_sensitivity,
                                             laplace_scale)


def _textured(shape=(64, 96, 3), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_laplace_scale_is_fans_formula():
    # 255 m / (b^2 eps) per channel, times the channel count
    assert laplace_scale(eps=0.5, b=16, m=16) == pytest.approx(255 * 16 / (256 * 0.5))
    assert laplace_scale(eps=2.0, b=4, m=1, channels=3) == pytest.approx(3 * 255 / (16 * 2.0))


def test_cell_means_are_block_averages():
    pixels = _textured((10, 7, 3))
    means = cell_means(pixels, 4)
    assert means.shape == (3, 2, 3)
    np.testing.assert_allclose(means[0, 0], pixels[:4, :4].reshape(-1, 3).mean(0))
    np.testing.assert_allclose(means[2, 1], pixels[8:, 4:].reshape(-1, 3).mean(0))  # border cell


def _dp_pix_noise(eps, b, m, draws=12, seed=0):
    pixels = _textured()
    rng = np.random.default_rng(seed)
    exact = cell_means(pixels, b)
    return np.concatenate([(dp_pix_noisy_cells(pixels, b, eps, m, rng) - exact).ravel()
                           for _ in range(draws)]), laplace_scale(eps, b, m, channels=3)


def test_dp_pix_noise_is_laplace_with_the_intended_scale():
    noise, scale = _dp_pix_noise(eps=0.8, b=4, m=3)
    assert noise.size > 10_000
    assert stats.kstest(noise, "laplace", args=(0, scale)).pvalue > 1e-3


def test_dp_pix_ks_test_rejects_a_wrong_scale():
    noise, scale = _dp_pix_noise(eps=0.8, b=4, m=3)
    assert stats.kstest(noise, "laplace", args=(0, scale * 1.15)).pvalue < 1e-6
    assert stats.kstest(noise, "norm", args=(0, scale * math.sqrt(2))).pvalue < 1e-6  # same variance


def test_dp_pix_noise_shrinks_with_budget_and_cells():
    loose, _ = _dp_pix_noise(eps=4.0, b=8, m=4)
    tight, _ = _dp_pix_noise(eps=0.5, b=8, m=4)
    assert np.median(np.abs(tight)) > 6 * np.median(np.abs(loose))


def test_l2_sensitivity_packs_changed_pixels_into_cells():
    assert l2_sensitivity(b=4, m=1) == pytest.approx(255 / 16)
    assert l2_sensitivity(b=4, m=16) == pytest.approx(255.0)                   # one full cell
    assert l2_sensitivity(b=4, m=20) == pytest.approx(255 * math.sqrt(1 + (4 / 16) ** 2))
    assert l2_sensitivity(b=4, m=16, channels=3) == pytest.approx(255 * math.sqrt(3))


def test_gaussian_sigma_classic_formula_and_analytic_tightness():
    classic = gaussian_sigma(0.5, 1e-5, 10.0, "classic")
    assert classic == pytest.approx(10.0 * math.sqrt(2 * math.log(1.25e5)) / 0.5)
    analytic = gaussian_sigma(0.5, 1e-5, 10.0, "analytic")
    assert analytic < classic
    # the analytic σ meets Balle & Wang's condition with equality (to bisection precision)
    def failure(sigma, eps=0.5, delta_sens=10.0):
        a, c = delta_sens / (2 * sigma), eps * sigma / delta_sens
        return norm.cdf(a - c) - math.exp(eps) * norm.cdf(-a - c)
    assert failure(analytic) <= 1e-5 + 1e-12
    assert failure(analytic * 0.98) > 1e-5
    # and it works for eps >= 1 where the classic bound is not proven
    assert 0 < gaussian_sigma(3.0, 1e-5, 10.0) < gaussian_sigma(1.0, 1e-5, 10.0)
    with pytest.raises(InvalidParameterError, match="eps < 1"):
        gaussian_sigma(2.0, 1e-5, 10.0, "classic")


def _dp_blur_noise(sigma_factor=1.0, draws=12):
    pixels = _textured()
    rng = np.random.default_rng(3)
    exact = cell_means(pixels, 4)
    noise, sigma = [], None
    for _ in range(draws):
        noisy, sigma = dp_blur_noisy_cells(pixels, 4, 1.5, 2, 1e-5, rng)
        noise.append((noisy - exact).ravel())
    return np.concatenate(noise), sigma


def test_dp_blur_noise_is_gaussian_with_the_mechanisms_sigma():
    noise, sigma = _dp_blur_noise()
    assert sigma == pytest.approx(gaussian_sigma(1.5, 1e-5, l2_sensitivity(4, 2, 3)))
    assert stats.kstest(noise, "norm", args=(0, sigma)).pvalue > 1e-3
    assert stats.kstest(noise, "norm", args=(0, sigma * 1.15)).pvalue < 1e-6


@pytest.mark.parametrize("name", ["dp_pix", "dp_blur"])
@pytest.mark.parametrize("bad", [{"eps": 0}, {"eps": -1.0}, {"eps": "nan"}, {"b": 0}, {"m": 0}])
def test_bad_parameters_raise_clear_errors(name, bad):
    with pytest.raises(InvalidParameterError):
        create_method(name, **bad)


def test_eps_error_names_the_privacy_budget():
    with pytest.raises(InvalidParameterError, match="privacy budget"):
        create_method("dp_pix", eps=0)
    with pytest.raises(InvalidParameterError, match="privacy budget"):
        dp_pix(_textured(), 4, 0.0, 1, np.random.default_rng(0))


def test_dp_pix_with_a_huge_budget_is_plain_pixelation():
    from facedeid.methods.classic import block_means
    pixels = _textured((48, 48, 3))
    out = dp_pix(pixels, 8, 1e12, 1, np.random.default_rng(0))
    # equal up to rounding of .5 ties (the noise is ~1e-11 grey levels)
    np.testing.assert_allclose(out, block_means(pixels, 8), atol=1)
    assert np.mean(out == block_means(pixels, 8)) > 0.9


@pytest.mark.parametrize("name", ["dp_pix", "dp_blur"])
def test_methods_change_the_face_and_keep_shape(name, astronaut, astronaut_face):
    from facedeid.pipeline import Anonymizer
    result = Anonymizer(method=name).anonymize(astronaut.copy(), faces=[astronaut_face])
    assert result.image.shape == astronaut.shape and result.image.dtype == np.uint8
    x0, y0, x1, y1 = astronaut_face.box.astype(int)
    difference = np.abs(result.image[y0:y1, x0:x1].astype(int) - astronaut[y0:y1, x0:x1]).mean()
    assert difference > 20  # default eps = 0.5, b = m = 16: heavy noise on the face


def test_grayscale_option_gives_grey_output_with_a_third_of_the_noise():
    from facedeid.alignment import FaceCrop
    pixels = _textured((64, 64, 3))
    crop = FaceCrop(pixels=pixels, landmarks=np.zeros((5, 2), np.float32),
                    box=np.array([0, 0, 64, 64], np.float32), mask=np.ones((64, 64), np.float32),
                    to_image=np.eye(2, 3, dtype=np.float32))
    out = create_method("dp_pix", grayscale=True, eps=1.0, b=8).apply(
        crop, FaceContext(rng=np.random.default_rng(0)))
    assert out.shape == pixels.shape
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
