"""Service evaluators (facedeid.evaluation.services): expression, attributes, detection."""
from __future__ import annotations

import numpy as np
import pytest

from facedeid.errors import InvalidInputError, MissingWeightsError
from facedeid.evaluation.services import SERVICES, ServiceOutput, create_service
from facedeid.evaluation.services.attributes import DEFAULT_CHECKPOINT
from facedeid.evaluation.services.expression import choose_haar_face, gray_crop, square_around

from .conftest import shared_path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- pure logic (no models) ------------------------------------------------------------------
def test_registry_lists_the_services():
    assert set(SERVICES) == {"expression", "attributes", "detection", "age_gender"}
    with pytest.raises(ValueError, match="unknown service"):
        create_service("gait")


def test_square_crop_geometry_and_border_padding():
    assert square_around(np.array([10, 20, 30, 60])).tolist() == [0, 20, 40, 60]
    gray = np.arange(100, dtype=np.uint8).reshape(10, 10)
    crop = gray_crop(gray, np.array([-5, -5, 5, 5]), size=10)  # half outside: edge-replicated
    assert crop.shape == (10, 10) and crop[0, 0] == gray[0, 0] and crop[-1, -1] == gray[4, 4]


def test_haar_face_choice_prefers_the_largest_face_overlapping_the_known_box():
    haar = np.array([[0, 0, 50, 50], [100, 100, 140, 140], [95, 95, 150, 150]], np.float32)
    assert choose_haar_face(haar, np.array([100, 100, 145, 145]), 0.2).tolist() == \
        [95, 95, 150, 150]
    assert choose_haar_face(haar, None, 0.2).tolist() == [95, 95, 150, 150]
    assert choose_haar_face(haar, np.array([300, 300, 340, 340]), 0.2) is None
    assert choose_haar_face(np.zeros((0, 4)), None, 0.2) is None


@pytest.fixture(scope="module")
def expression():
    return create_service("expression", crop="haar")


def test_expression_compare_implements_eq8_and_the_table3_breakdown(expression):
    # original: angry, angry, happy, happy, happy, neutral; anonymized changes 1 angry, 1 happy
    original = ServiceOutput(np.array([0, 0, 3, 3, 3, 6]), None, np.ones(6, bool))
    anonymized = ServiceOutput(np.array([0, 4, 3, 3, 5, 6]), None,
                               np.array([1, 1, 0, 1, 1, 1], bool))
    result = expression.compare(original, anonymized)
    assert result["service_loss_rate"] == pytest.approx(2 / 6)
    assert result["consistency"] == pytest.approx(4 / 6)
    assert result["per_class_loss_rate"]["angry"] == pytest.approx(0.5)
    assert result["per_class_loss_rate"]["happy"] == pytest.approx(1 / 3)
    assert result["per_class_loss_rate"]["neutral"] == 0.0
    assert result["per_class_loss_rate"]["fear"] is None and result["per_class_count"]["fear"] == 0
    assert result["service_loss_rate_both_found"] == pytest.approx(2 / 5)
    with pytest.raises(InvalidInputError):
        expression.compare(original, ServiceOutput(np.array([0]), None, np.ones(1, bool)))


def test_empty_input_gives_empty_outputs_and_undefined_rates(expression):
    output = expression.predict([], [])
    assert output.labels.shape == (0,) and output.probabilities.shape == (0, 7)
    result = expression.compare(output, output)
    assert result["n_images"] == 0 and result["service_loss_rate"] is None


def test_bad_inputs_raise_readable_errors(expression):
    with pytest.raises(InvalidInputError, match="uint8"):
        expression.predict([np.zeros((64, 64), np.uint8)], [None])
    with pytest.raises(InvalidInputError, match="boxes"):
        expression.predict([np.zeros((64, 64, 3), np.uint8)], [None, None])
    with pytest.raises(InvalidInputError, match="x1 > x0"):
        expression.predict([np.zeros((64, 64, 3), np.uint8)], [np.array([10, 10, 5, 20])])


def test_image_without_a_face_is_still_classified_but_not_found(expression):
    blank = np.full((120, 100, 3), 128, np.uint8)
    output = expression.predict([blank, blank], [None, np.array([20, 20, 80, 90])])
    assert output.found.tolist() == [False, False]
    assert output.labels.shape == (2,) and np.isfinite(output.probabilities).all()


# -- real faces --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fer_faces():
    """40 FER2013 PrivateTest images as RGB with their true labels."""
    import cv2

    from facedeid.models.mini_xception import EXPRESSIONS
    root = shared_path("fer2013", "test")
    images, labels = [], []
    for label, name in enumerate(EXPRESSIONS):
        for path in sorted((root / name).iterdir())[:6]:
            images.append(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE),
                                       cv2.COLOR_GRAY2RGB))
            labels.append(label)
    return images, np.asarray(labels)


def test_box_crop_of_a_fer_image_reproduces_the_direct_network_prediction(fer_faces):
    """The service's crop path equals the benchmark path (resize 48 -> 64, scale to [-1, 1])."""
    import cv2
    import torch

    from facedeid.models.mini_xception import preprocess_gray
    images, _ = fer_faces
    service = create_service("expression", crop="box")
    output = service.predict(images, [np.array([0, 0, 48, 48])] * len(images))
    gray = np.stack([cv2.resize(image[..., 0], (64, 64)) for image in images])
    with torch.no_grad():
        direct = service.model(preprocess_gray(gray)).argmax(dim=1).numpy()
    assert output.found.all()
    np.testing.assert_array_equal(output.labels, direct)


@pytest.fixture(scope="module")
def celeba_faces(centerface):
    """24 CelebA test-split images (178x218) with their CenterFace boxes."""
    from facedeid.io.images import read_image
    root = shared_path("celeba-id200")
    names = [line.split()[0] for line in (root / "identity_split.txt").read_text().splitlines()
             if line.endswith("test")][:30]
    kept_names, images, boxes = [], [], []
    for name in names:
        image = read_image(root / "img_align_celeba" / name).rgb
        faces = centerface.detect(image)
        if faces and len(images) < 24:
            kept_names.append(name), images.append(image), boxes.append(faces[0].box)
    assert len(images) >= 20
    return kept_names, images, boxes


@pytest.fixture(scope="module")
def blacked_out(celeba_faces):
    """The same images with the whole face box painted black (a brutal anonymization)."""
    _, images, boxes = celeba_faces
    out = []
    for image, box in zip(images, boxes):
        image = image.copy()
        x0, y0, x1, y1 = box.astype(int)
        image[max(y0 - 10, 0):y1 + 10, max(x0 - 10, 0):x1 + 10] = 0
        out.append(image)
    return out


def test_expression_service_on_celeba_originals_and_anonymized(expression, celeba_faces,
                                                               blacked_out):
    _, images, boxes = celeba_faces
    original = expression.predict(images, boxes)
    assert original.found.mean() >= 0.8          # Haar finds frontal CelebA faces
    same = expression.compare(original, expression.predict(images, boxes))
    assert same["service_loss_rate"] == 0.0 and same["consistency"] == 1.0
    erased = expression.predict(blacked_out, boxes)
    assert erased.found.mean() <= 0.2             # nothing left for Haar to find
    result = expression.compare(original, erased)
    assert result["found_rate_anonymized"] <= 0.2
    # a black square cannot carry the originals' varied expressions
    assert result["service_loss_rate"] >= 0.3


def test_detection_service_finds_originals_and_loses_erased_faces(celeba_faces, blacked_out):
    _, images, boxes = celeba_faces
    service = create_service("detection")  # dlib HOG, independent of CenterFace
    original = service.predict(images, boxes)
    erased = service.predict(blacked_out, boxes)
    result = service.compare(original, erased)
    assert result["detector"] == "dlib-hog"
    assert result["original_detection_rate"] >= 0.9
    assert result["detection_rate"] <= 0.1
    shifted = service.predict(images, [box + 200 for box in boxes])  # box where no face is
    assert not shifted.labels.any()
    blank = service.predict([np.full((100, 100, 3), 90, np.uint8)], [None])
    assert blank.labels.tolist() == [False] and blank.found.tolist() == [False]


def test_missing_or_foreign_attribute_checkpoint_names_the_training_command(tmp_path):
    with pytest.raises(MissingWeightsError, match="facedeid.training.attributes"):
        create_service("attributes", checkpoint=tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="facedeid.training.attributes"):
        create_service("attributes", checkpoint=junk)


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="attribute checkpoint not trained")
def test_attribute_service_predicts_celeba_labels_and_measures_agreement(celeba_faces,
                                                                         blacked_out):
    from facedeid.io.datasets import read_celeba_attributes
    names, images, boxes = celeba_faces
    service = create_service("attributes")
    assert service.label_names[:2] == ["Male", "Smiling"]
    _, table = read_celeba_attributes(shared_path("celeba-id200", "list_attr_celeba.txt"))
    truth = np.array([[table[name][a] for a in service.label_names] for name in names])
    original = service.predict(images, boxes)
    assert original.labels.shape == truth.shape and original.found.all()
    male = service.label_names.index("Male")
    assert (original.labels[:, male] == truth[:, male]).mean() >= 0.8
    same = service.compare(original, service.predict(images, boxes))
    assert same["mean_attribute_accuracy"] == 1.0
    erased = service.compare(original, service.predict(blacked_out, boxes))
    assert erased["mean_attribute_accuracy"] < 0.9
    assert set(erased["attribute_accuracy"]) == set(service.label_names)
    unknown = service.predict([np.full((90, 90, 3), 200, np.uint8)], [None])
    assert unknown.found.tolist() == [False] and unknown.labels.shape == (1, 5)
