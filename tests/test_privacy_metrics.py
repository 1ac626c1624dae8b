"""Privacy metrics on constructed embeddings whose answers are known, then on real faces."""
from __future__ import annotations

import numpy as np
import pytest

from facedeid.evaluation import privacy

from .conftest import shared_path


def test_identity_distance_l2_and_cosine():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(privacy.identity_distance(a, b, "euclidean"), [5.0, np.sqrt(5)])
    np.testing.assert_allclose(privacy.identity_distance(a, a * 3, "cosine"), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(privacy.identity_distance(a[1:], b[1:], "cosine"), [1.0])
    with pytest.raises(ValueError):
        privacy.identity_distance(a, b[:1])
    with pytest.raises(ValueError):
        privacy.identity_distance(a, b, "manhattan")


def test_pairwise_matches_paired():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    for metric in privacy.METRICS:
        full = privacy.pairwise_distance(a, b, metric)
        assert full.shape == (5, 7)
        np.testing.assert_allclose(np.diag(full[:5, :5]),
                                   privacy.identity_distance(a, b[:5], metric), atol=1e-9)


def test_sdr_is_fraction_strictly_above_tau():
    # book Eq. 3.2: f_ver = 0 when Id-dis > tau; a distance equal to tau is NOT a success
    assert privacy.successful_deidentification_rate([0.2, 0.6, 0.61, 0.9], 0.6) == 0.5
    assert privacy.successful_deidentification_rate([0.7, 0.8], 0.6) == 1.0
    assert np.isnan(privacy.successful_deidentification_rate([], 0.6))


def test_rank1_own_gallery_and_linking():
    gallery = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    ids = ["a", "b", "c"]
    # probes: near a (correct), near c but labelled b (wrong), near b (correct)
    probes = np.array([[0.5, 0.0], [0.0, 9.0], [9.0, 1.0]])
    assert privacy.rank1_identification_rate(probes, ["a", "b", "b"], gallery, ids) == \
        pytest.approx(2 / 3)
    # a probe whose identity is absent from the gallery is excluded, not counted as a miss
    hits = privacy.rank1_hits(probes, ["a", "z", "b"], gallery, ids)
    assert hits.tolist() == [True, True]
    assert privacy.identifiable_mask(["a", "z"], ids).tolist() == [True, False]
    assert np.isnan(privacy.rank1_identification_rate(probes[:1], ["z"], gallery, ids))


def test_threshold_and_tar_at_far():
    impostor = np.arange(1, 101, dtype=float)  # 100 impostor distances 1..100
    threshold = privacy.threshold_at_far(impostor, 0.05)
    assert np.mean(impostor <= threshold) == pytest.approx(0.05)
    assert np.mean(impostor <= privacy.threshold_at_far(impostor, 0.001)) == 0.0
    genuine = np.array([0.5, 2.0, 4.9, 5.0, 50.0])
    tar, thr = privacy.tar_at_far(genuine, impostor, 0.05)
    assert thr == threshold and tar == pytest.approx(4 / 5)
    tied = np.array([1.0, 1.0, 1.0, 2.0])
    assert np.mean(tied <= privacy.threshold_at_far(tied, 0.5)) <= 0.5
    with pytest.raises(ValueError):
        privacy.threshold_at_far(impostor, 1.5)


def test_genuine_impostor_split():
    emb = np.array([[0.0], [1.0], [5.0]])
    genuine, impostor = privacy.genuine_impostor_distances(emb, ["a", "a", "b"], emb, ["a", "a", "b"],
                                                           exclude_same_index=True)
    assert sorted(genuine.tolist()) == [1.0, 1.0]
    assert sorted(impostor.tolist()) == [4.0, 4.0, 5.0, 5.0]


def test_real_faces_dlib_identifies_clean_and_not_masked():
    """On 24 real CelebA faces (12 people x 2 photos) dlib links clean photos; a solid mask defeats it."""
    shared_path("celeba-id200")
    from facedeid.detection import create_detector
    from facedeid.evaluation.recognizers import create_recognizer
    from facedeid.io.datasets import load_dataset
    from facedeid.pipeline import Anonymizer

    test = load_dataset("celeba-id200", split="test").records
    train = load_dataset("celeba-id200", split="train").records
    people = sorted({r.identity for r in test})[:12]
    probes = [next(r for r in test if r.identity == p) for p in people]
    gallery = [next(r for r in train if r.identity == p) for p in people]
    detector = create_detector("centerface")
    recognizer = create_recognizer("dlib")

    def located(records):
        images = [r.load() for r in records]
        return images, [max(detector.detect(im), key=lambda f: f.width).box for im in images]

    probe_images, probe_boxes = located(probes)
    gallery_images, gallery_boxes = located(gallery)
    clean = recognizer.embed(probe_images, probe_boxes)
    gallery_emb = recognizer.embed(gallery_images, gallery_boxes)
    assert privacy.rank1_identification_rate(clean, people, gallery_emb, people) >= 0.8
    masker = Anonymizer("mask", detector=detector, landmarks="box")
    from facedeid.detection import Face
    masked = [masker.anonymize(im, faces=[Face(box=b)]).image for im, b in zip(probe_images, probe_boxes)]
    attacked = recognizer.embed(masked, probe_boxes, reference_images=probe_images)
    distance = privacy.identity_distance(clean, attacked)
    assert privacy.successful_deidentification_rate(distance, 0.6) >= 0.9
    assert privacy.rank1_identification_rate(attacked, people, gallery_emb, people) <= 0.3


# -- quality metrics (same file: small and pure) -------------------------------------------------
def test_psnr_ssim_and_face_region():
    from facedeid.evaluation import quality

    a = np.full((40, 40, 3), 100, np.uint8)
    b = a.copy()
    b[10:20, 10:20] += 10  # a 10x10 change inside the face box only
    assert quality.psnr(a, a) == float("inf") and quality.ssim(a, a) == pytest.approx(1.0)
    q = quality.image_quality(a, b, np.array([10, 10, 20, 20]))
    assert q["face_mse"] == pytest.approx(100.0)
    assert q["face_psnr"] == pytest.approx(10 * np.log10(255 ** 2 / 100))
    assert q["mse"] == pytest.approx(100.0 * 100 / 1600)  # diluted by the untouched pixels
    assert 0 < q["ssim"] < 1 and 0 < q["face_ssim"] < 1
    noisy = b.copy()
    noisy[10:20, 10:20] = np.random.default_rng(0).integers(0, 256, (10, 10, 3))
    q_noisy = quality.image_quality(a, noisy, np.array([10, 10, 20, 20]))
    assert q_noisy["face_ssim"] < q_noisy["ssim"] < q["ssim"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_frechet_distances_and_user_weights(tmp_path):
    import torch

    from facedeid.errors import MissingWeightsError
    from facedeid.evaluation import quality

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(500, 4))
    assert quality.embedding_frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert quality.embedding_frechet_distance(feats, feats + 1.0) == pytest.approx(4.0, rel=1e-3)
    with pytest.raises(MissingWeightsError, match="--fid-weights"):
        quality.TorchFeatureExtractor(None)
    with pytest.raises(MissingWeightsError, match="not found"):
        quality.UserLPIPS(tmp_path / "lpips.pt")

    class MeanColour(torch.nn.Module):  # a stand-in backbone: per-channel means and stds
        def forward(self, x):
            return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    path = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(MeanColour()), str(path))
    extractor = quality.TorchFeatureExtractor(path, size=32)
    images = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(12)]
    darker = [(im // 2).astype(np.uint8) for im in images]
    assert extractor.features(images).shape == (12, 6)
    assert extractor.fid(images, images) == pytest.approx(0.0, abs=1e-6)
    assert extractor.fid(images, darker) > 0.01
