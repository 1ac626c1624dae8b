"""Dataset loaders: official layouts from ../shared/data, and built-on-the-fly bad layouts."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facedeid.errors import FaceDeidError
from facedeid.io.datasets import (DatasetError, default_split, detect_layout, load_dataset,
                                  read_celeba_id200_index)

from .conftest import shared_path


def _write_celeba(root, names, identities, partitions, attrs=("Male", "Smiling")):
    (root / "img_align_celeba").mkdir(parents=True)
    for name in names:
        Image.fromarray(np.full((20, 16, 3), 128, np.uint8)).save(root / "img_align_celeba" / name)
    lines = [str(len(names)), " ".join(attrs)]
    for k, name in enumerate(names):
        lines.append(name + " " + " ".join("1" if (k + j) % 2 else "-1" for j in range(len(attrs))))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "identity_CelebA.txt").write_text(
        "".join(f"{n} {i}\n" for n, i in zip(names, identities)))
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, partitions)))


def test_celeba_layout_built_here(tmp_path):
    names = [f"{k:06d}.jpg" for k in range(1, 7)]
    _write_celeba(tmp_path, names, [5, 5, 7, 7, 9, 9], [0, 0, 1, 2, 2, 2])
    dataset = load_dataset(tmp_path, split="test")
    assert [r.name for r in dataset] == names[3:]
    assert [r.identity for r in dataset] == ["7", "9", "9"]
    assert dataset.attribute_names == ("Male", "Smiling")
    assert dataset[0].labels["attributes"] == {"Male": True, "Smiling": False}
    assert dataset[0].load().shape == (20, 16, 3)
    assert len(load_dataset(tmp_path, split="all")) == 6
    assert len(load_dataset(tmp_path, split="all", limit=2)) == 2
    # identity_split.txt, when present, replaces the official partition
    (tmp_path / "identity_split.txt").write_text(
        "".join(f"{n} {'train' if k % 2 == 0 else 'test'}\n" for k, n in enumerate(names)))
    assert [r.name for r in load_dataset(tmp_path, split="test")] == names[1::2]
    assert len(load_dataset(tmp_path, split="test", split_source="official")) == 3


def test_celeba_id200_index_rows_follow_the_split_file(tmp_path):
    names = [f"{k:06d}.jpg" for k in range(1, 5)]
    _write_celeba(tmp_path, names, [5, 5, 7, 7], [0, 0, 0, 0])
    (tmp_path / "identity_split.txt").write_text(
        f"{names[3]} test\n{names[0]} train\n{names[2]} train\n")
    assert read_celeba_id200_index(tmp_path) == [
        (names[3], 7, False), (names[0], 5, True), (names[2], 7, True)]
    (tmp_path / "identity_split.txt").write_text("000099.jpg train\n")
    with pytest.raises(DatasetError, match="identity_CelebA.txt does not"):
        read_celeba_id200_index(tmp_path)
    (tmp_path / "identity_split.txt").unlink()
    with pytest.raises(DatasetError, match="identity_split.txt is missing"):
        read_celeba_id200_index(tmp_path)


def test_bad_layouts_say_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset(tmp_path / "absent")
    _write_celeba(tmp_path, ["000001.jpg"], [1], [0])
    (tmp_path / "identity_CelebA.txt").unlink()
    with pytest.raises(DatasetError, match="identity_CelebA.txt is missing"):
        load_dataset(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FaceDeidError, match="no image files"):
        load_dataset(empty)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("celeba-id200", data_root=tmp_path)


def test_plain_folder_and_layout_guess(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "x.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "folder"
    assert default_split(tmp_path) == "all" and default_split("celeba-id200") == "test"
    dataset = load_dataset(tmp_path, split="all")
    assert [r.name for r in dataset] == ["x.png"] and dataset[0].identity is None
    with pytest.raises(DatasetError, match="no splits"):
        load_dataset(tmp_path, split="test")


def test_shared_celeba_id200_identity_split():
    shared_path("celeba-id200")
    test = load_dataset("celeba-id200", split="test")
    train = load_dataset("celeba-id200", split="train")
    assert len(test) == 1200 and len(train) == 4800
    assert len(test.identities) == 200 and set(test.identities) == set(train.identities)
    assert len(test.attribute_names) == 40
    assert test[0].load().shape == (218, 178, 3)


def test_shared_first10k_first_files_in_order():
    shared_path("celeba-first10k")
    dataset = load_dataset("celeba-first10k", split="all", limit=1000)
    assert dataset[0].name == "000001.jpg" and dataset[999].name == "001000.jpg"
    assert dataset[0].load().shape == (109, 89, 3)
    assert dataset[0].identity == "2880"


def test_shared_expression_and_identity_folders():
    shared_path("fer2013")
    fer = load_dataset("fer2013", split="PrivateTest")
    assert len(fer) == 3589 and fer[0].identity is None
    assert {r.labels["expression"] for r in fer} == {"angry", "disgust", "fear", "happy",
                                                     "neutral", "sad", "surprise"}
    ck = load_dataset("ckplus48")
    assert len(ck) == 981 and all(r.identity.startswith("S") for r in ck)
    assert "contempt" in {r.labels["expression"] for r in ck}
    att = load_dataset("att_faces")
    assert len(att) == 400 and len(att.identities) == 40
    assert all(r.path.suffix == ".pgm" for r in att)
    yale = load_dataset("yalefaces")
    assert len(yale.identities) == 15 and yale[0].identity == "subject01"
    assert yale[0].load().ndim == 3  # GIF without extension decodes
