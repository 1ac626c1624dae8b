"""Aligned face crops for the generator and Private-Encoder training, cached as npz.

The crops are cut exactly as the pipeline cuts them at inference for an ``space = "aligned"``
method: :class:`~facedeid.detection.locate.FaceLocator` (CenterFace, second chance, dlib-68
landmarks reduced to five points), :func:`~facedeid.detection.locate.main_face` and
:class:`~facedeid.alignment.FaceAligner` at the model's size. A model trained on another framing
(CelebA's own alignment, say) would meet a different picture at run time.

The training people are :func:`facedeid.training.attributes.select_records`' train set:
``celeba-first10k`` without any ``celeba-id200`` person (so the 40 held-out test people's
60 first10k files are out) plus the 160 *train* people of ``identity_split_disjoint.txt``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

# Stored in the cache: crops cut by another rule are rebuilt, not reused.
CROP_RULE = "v1-locator-dlib68-main_face-FaceAligner"


def record_key(record) -> str:
    """``000123.jpg@celeba-first10k``: unique across the two CelebA subsets."""
    return record.path.name + "@" + record.path.parent.parent.name


def build_aligned_crops(records: Sequence, size: int, locator, desc: str = "aligned crops"
                        ) -> tuple[np.ndarray, list[str], int]:
    """``(N, size, size, 3) uint8`` crops, their record keys, and the count without a face."""
    from tqdm import tqdm

    from ..alignment import FaceAligner
    from ..detection.locate import main_face

    aligner = FaceAligner(size)
    crops, keys, skipped = [], [], 0
    for record in tqdm(records, desc=desc, unit="img", mininterval=10):
        image = record.load()
        face = main_face(locator.locate(image))
        if face is None:
            skipped += 1
            continue
        crops.append(aligner.align(image, face).pixels)
        keys.append(record_key(record))
    empty = np.zeros((0, size, size, 3), np.uint8)
    return (np.stack(crops) if crops else empty), keys, skipped


def cached_aligned_crops(cache_dir: Path, tag: str, records: Sequence, size: int,
                         threads: int = 1) -> tuple[np.ndarray, list[str], int]:
    """:func:`build_aligned_crops`, cached under ``cache_dir`` by records, size and crop rule."""
    from ..detection.locate import FaceLocator

    keys = [record_key(r) for r in records]
    digest = hashlib.sha256("\n".join([CROP_RULE, str(size), *keys]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{tag}_{size}px_{digest}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return data["crops"], [str(k) for k in data["keys"]], int(data["skipped"])
    locator = FaceLocator("centerface", {"threads": threads})
    crops, found, skipped = build_aligned_crops(records, size, locator, desc=f"{tag} crops")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, crops=crops, keys=np.asarray(found), skipped=skipped)
    partial.replace(path)
    return crops, found, skipped


def generator_training_crops(data_root: Path, size: int, cache_dir: Path, threads: int = 1,
                             limit: int | None = None):
    """``(train crops, held-out test crops, summary)`` for the face generator.

    The held-out crops (the 40 test people) are returned only so a trainer can *report* on
    unseen faces; they must never enter a gradient step. ``limit`` keeps the first N records of
    each part (quick trials and tests).
    """
    from .attributes import select_records

    train_records, held_records, _, summary = select_records(Path(data_root))
    if limit is not None:
        train_records, held_records = train_records[:limit], held_records[:limit]
    train, _, train_skipped = cached_aligned_crops(cache_dir, "train", train_records, size,
                                                   threads)
    held, _, held_skipped = cached_aligned_crops(cache_dir, "heldout", held_records, size,
                                                 threads)
    summary = dict(summary, train_crops=len(train), train_skipped_no_face=train_skipped,
                   held_out_crops=len(held), held_out_skipped_no_face=held_skipped)
    return train, held, summary
