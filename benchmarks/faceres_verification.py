"""faceres verification accuracy, gender accuracy and speed on celeba-id200.

Pairs: every same-person pair and every different-person pair among the images of the chosen
identities of ``identity_split_disjoint.txt`` (default: the 40 *test* identities, 1,200 images,
17,400 same / 702,000 different pairs). Faces are located with CenterFace (largest face), cropped
at that box with :class:`~facedeid.evaluation.faceres_recognizer.FaceresRecognizer`'s margin.

Reported:

* best-threshold accuracy: balanced accuracy ``(same accepted + different rejected) / 2`` at
  the cosine threshold that maximises it on these pairs (the usual "best threshold" figure),
* accuracy at the recognizer's shipped threshold (chosen on *train* identities, so on the test
  identities it is an honest held-out figure), and ROC AUC,
* gender accuracy of ``male_probability >= 0.5`` against CelebA's ``Male`` attribute,
* speed: faces/s of the recognizer alone (crop + forward, batch 32) and of detection.

``--split train --identities 40`` is how the threshold and the margin were chosen; ``--margins``
and ``--preprocessing`` compare crop margins and the two input conventions (the author's
BGR-minus-means, ``caffe``; human.js's plain RGB 0-255, ``rgb255``).

Measured on 2026-12-03 (2 CPU cores shared with other jobs, load 5-8, so speeds are low bounds):

    python benchmarks/faceres_verification.py --compare dlib
    test split: 40 identities, 1200 images, 1193 with a CenterFace face (14.6 faces/s detection)
    faceres (margin 0.08, BGR minus means): best-threshold accuracy 0.9330 at cos 0.498;
        at the shipped threshold (cos 0.50) 0.9328; AUC 0.9768; 17,212 same / 693,816
        different pairs; gender accuracy 0.9807 (CelebA Male); 7.1 faces/s (batch 32)
    dlib (euclidean, landmark-aligned): best-threshold accuracy 0.9637 at 0.661; at its own
        0.6 0.9405; AUC 0.9928; 6.5 faces/s

    python benchmarks/faceres_verification.py --split train --identities 40 --seed 1
    train identities: best 0.9464 at cos 0.510, 0.9446 at cos 0.50 (-> the shipped threshold)

    python benchmarks/faceres_verification.py --split train --identities 20 \
        --margins 0 0.08 0.2 --preprocessing caffe rgb255
    margin 0 / 0.08 / 0.2: caffe 0.9393 / 0.9491 / 0.9488, rgb255 0.8887 / 0.9009 / 0.9035

On its own (one thread, batch 32, no other load from this script) the network takes about
45 ms per face. CelebA's same-person pairs span years, poses and make-up, so these accuracies
sit below the ~98 % reported on LFW-style pairs; landmark-aligned crops did not help faceres
(0.946 vs 0.949 on the 20 train identities).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _read_split(path: Path) -> dict[str, str]:
    rows = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows[parts[0]] = parts[1]
    return rows


def select_records(data_root: Path | None, split: str, identities: int | None, seed: int):
    """celeba-id200 records of ``split`` in ``identity_split_disjoint.txt`` (first
    ``identities`` identities in sorted order, or all)."""
    from facedeid.io.datasets import default_data_root, load_dataset

    dataset = load_dataset("celeba-id200", split="all", data_root=data_root)
    split_file = (Path(data_root) if data_root else default_data_root()) / "celeba-id200" / \
        "identity_split_disjoint.txt"
    splits = _read_split(split_file)
    records = [r for r in dataset if splits.get(r.name) == split]
    chosen = sorted({r.identity for r in records}, key=int)
    if identities is not None:
        chosen = list(np.random.default_rng(seed).permutation(chosen)[:identities])
    keep = set(chosen)
    return [r for r in records if r.identity in keep]


def detect_boxes(images: list[np.ndarray]) -> tuple[list[int], list[np.ndarray], float]:
    """Indices of images with a face, the main face's box for each, and faces/s."""
    from facedeid.detection import create_detector, main_face

    detector = create_detector("centerface")
    started = time.perf_counter()
    kept, boxes = [], []
    for index, image in enumerate(images):
        face = main_face(detector.detect(image))
        if face is not None:
            kept.append(index)
            boxes.append(face.box)
    return kept, boxes, len(images) / (time.perf_counter() - started)


def pair_scores(embeddings: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of all same-identity and all different-identity pairs (i < j)."""
    similarity = embeddings @ embeddings.T
    upper = np.triu(np.ones_like(similarity, dtype=bool), k=1)
    same = identities[:, None] == identities[None, :]
    return similarity[upper & same], similarity[upper & ~same]


def best_threshold(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """``(balanced accuracy, cosine threshold)`` maximising ``(TPR + TNR) / 2`` for
    "same person when cos >= threshold", over every distinct score as a candidate."""
    scores = np.concatenate([same, different])
    is_same = np.concatenate([np.ones(len(same), bool), np.zeros(len(different), bool)])
    order = np.argsort(-scores, kind="stable")
    scores, is_same = scores[order], is_same[order]
    accepted_same = np.cumsum(is_same) / len(same)            # threshold at scores[k]
    accepted_different = np.cumsum(~is_same) / len(different)
    accuracy = (accepted_same + 1.0 - accepted_different) / 2
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]      # thresholds between distinct scores
    accuracy = np.where(last_of_tie, accuracy, -1.0)
    best = int(np.argmax(accuracy))
    return float(accuracy[best]), float(scores[best])


def accuracy_at(same: np.ndarray, different: np.ndarray, threshold: float) -> float:
    return float((np.mean(same >= threshold) + np.mean(different < threshold)) / 2)


def roc_auc(same: np.ndarray, different: np.ndarray) -> float:
    """Probability that a same pair scores above a different pair (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([same, different]))
    return float((ranks[:len(same)].sum() - len(same) * (len(same) + 1) / 2)
                 / (len(same) * len(different)))


def embed(recognizer, images, boxes, preprocessing: str, batch_size: int):
    """Descriptors (unit), male probabilities and faces/s for one input convention."""
    import torch

    from facedeid.models.faceres import preprocess_uint8

    started = time.perf_counter()
    crops = recognizer.crops(images, boxes)
    descriptors, male = [], []
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            batch = crops[start:start + batch_size]
            graph_input = preprocess_uint8(batch) if preprocessing == "caffe" \
                else torch.from_numpy(batch).float()
            output = recognizer.model.postprocess(recognizer.model.run_graph(graph_input))
            descriptors.append(output.descriptor.numpy())
            male.append(output.male_probability.numpy())
    speed = len(crops) / (time.perf_counter() - started)
    return np.concatenate(descriptors), np.concatenate(male), speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="identities of identity_split_disjoint.txt to pair up")
    parser.add_argument("--identities", type=int, default=None,
                        help="use this many identities of the split (random, --seed); default all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margins", type=float, nargs="+", default=[None],
                        help="crop margins (fraction of the box side) to compare; default the "
                             "recognizer's own")
    parser.add_argument("--preprocessing", nargs="+", choices=("caffe", "rgb255"),
                        default=["caffe"])
    parser.add_argument("--compare", nargs="*", default=[], metavar="RECOGNIZER",
                        help="also score these registered recognizers (e.g. dlib) on the same "
                             "pairs and boxes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from facedeid.evaluation.faceres_recognizer import FaceresRecognizer

    torch.set_num_threads(args.threads)
    records = select_records(args.data_root, args.split, args.identities, args.seed)
    images = [record.load() for record in records]
    kept, boxes, detect_speed = detect_boxes(images)
    images = [images[i] for i in kept]
    identities = np.array([records[i].identity for i in kept])
    male_truth = np.array([records[i].labels["attributes"]["Male"] for i in kept])
    print(f"{args.split} split: {len(set(identities))} identities, {len(records)} images, "
          f"{len(kept)} with a CenterFace face ({detect_speed:.1f} faces/s detection)")
    shipped = FaceresRecognizer()
    print(f"shipped threshold: cosine distance {shipped.threshold:.3f} "
          f"(cos >= {1 - shipped.threshold:.3f})")
    for margin in args.margins:
        recognizer = FaceresRecognizer(margin=margin, batch_size=args.batch_size)
        for preprocessing in args.preprocessing:
            descriptors, male, speed = embed(recognizer, images, boxes, preprocessing,
                                             args.batch_size)
            same, different = pair_scores(descriptors, identities)
            accuracy, threshold = best_threshold(same, different)
            print(f"margin {recognizer.margin:.2f} {preprocessing:6s}: "
                  f"best-threshold accuracy {accuracy:.4f} at cos {threshold:.3f} "
                  f"(distance {1 - threshold:.3f}); at shipped threshold "
                  f"{accuracy_at(same, different, 1 - shipped.threshold):.4f}; "
                  f"AUC {roc_auc(same, different):.4f}; {len(same)} same / {len(different)} "
                  f"different pairs; gender accuracy "
                  f"{np.mean((male >= 0.5) == male_truth):.4f}; {speed:.1f} faces/s "
                  f"(batch {args.batch_size}, {args.threads} threads)")
    for name in args.compare:
        compare_recognizer(name, images, boxes, identities)


def compare_recognizer(name: str, images, boxes, identities: np.ndarray) -> None:
    """Best-threshold accuracy of another registered recognizer on the same pairs."""
    from facedeid.evaluation.privacy import pairwise_distance
    from facedeid.evaluation.recognizers import create_recognizer

    recognizer = create_recognizer(name)
    started = time.perf_counter()
    embeddings = recognizer.embed(images, boxes)
    speed = len(images) / (time.perf_counter() - started)
    distance = pairwise_distance(embeddings, embeddings, recognizer.metric)
    upper = np.triu(np.ones_like(distance, dtype=bool), k=1)
    same = identities[:, None] == identities[None, :]
    # negated distances are similarities: best_threshold accepts scores >= the threshold
    same_scores, different_scores = -distance[upper & same], -distance[upper & ~same]
    accuracy, threshold = best_threshold(same_scores, different_scores)
    own = accuracy_at(same_scores, different_scores, -recognizer.threshold)
    print(f"{name} ({recognizer.metric}): best-threshold accuracy {accuracy:.4f} at distance "
          f"{-threshold:.3f}; at its own threshold {recognizer.threshold:.3f} {own:.4f}; "
          f"AUC {roc_auc(same_scores, different_scores):.4f}; {speed:.1f} faces/s")


if __name__ == "__main__":
    main()
