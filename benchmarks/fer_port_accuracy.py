"""Accuracy of the PyTorch mini-Xception port on FER2013 PrivateTest (the reported number: 0.657).

Proves the h5py->torch port of :mod:`facedeid.models.mini_xception` reproduces the Keras model:
every test image (48x48 gray) is resized to 64x64 as in the original training code, scaled to
[-1, 1], and classified by argmax.

Run::

    python benchmarks/fer_port_accuracy.py [--data ../shared/data/fer2013/test] [--limit N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def load_fer_folder(root: Path, limit_per_class: int | None = None):
    """``(N, 64, 64) uint8`` gray images and ``(N,)`` labels in the model's class order."""
    import cv2

    from facedeid.models.mini_xception import EXPRESSIONS, INPUT_SIZE

    images, labels = [], []
    for label, expression in enumerate(EXPRESSIONS):
        files = sorted((root / expression).glob("*"))
        if limit_per_class:
            files = files[:limit_per_class]
        for file in files:
            gray = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise OSError(f"cannot read {file}")
            images.append(cv2.resize(gray, (INPUT_SIZE, INPUT_SIZE)))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def classify(model, gray_64: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import torch

    from facedeid.models.mini_xception import preprocess_gray

    predictions = []
    with torch.no_grad():
        for start in range(0, len(gray_64), batch_size):
            logits = model(preprocess_gray(gray_64[start:start + batch_size]))
            predictions.append(logits.argmax(dim=1).numpy())
    return np.concatenate(predictions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/fer2013/test")
    parser.add_argument("--limit", type=int, default=None, help="images per class (default all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"FER2013 folder not found: {args.data}", file=sys.stderr)
        return 2

    import torch

    from facedeid.models.mini_xception import EXPRESSIONS, load_mini_xception

    torch.set_num_threads(args.threads)
    images, labels = load_fer_folder(args.data, args.limit)
    model = load_mini_xception()
    started = time.perf_counter()
    predictions = classify(model, images)
    elapsed = time.perf_counter() - started
    print(f"FER2013 {args.data.name}: {len(labels)} images, accuracy "
          f"{(predictions == labels).mean():.4f}  ({elapsed:.1f} s)")
    for label, expression in enumerate(EXPRESSIONS):
        mask = labels == label
        print(f"  {expression:<9} n={mask.sum():4d}  accuracy {(predictions[mask] == label).mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
