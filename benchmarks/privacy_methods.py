"""Benchmark the privacy-theoretic methods (k-Same, DP-Pix/DP-Blur, identity cloak) on celeba-id200.

Two parts, both recorded in docs/benchmarks.md:

``compare``: the evaluation harness (``facedeid.evaluation.runner``, the same code as
``facedeid evaluate --compare``) on the celeba-id200 test split, next to classic operators,
attacked by **two** recognizers — dlib (never seen by the cloak) and the PyTorch surrogate the
cloak was optimised against — so the cloak's transfer is visible. Equivalent CLI::

    facedeid evaluate --dataset celeba-id200 --split test --limit 300 \
        --recognizer dlib --recognizer surrogate -o /tmp/privacy_eval --compare mosaic ...

``ksame``: the dataset-level k-Same family, where its guarantee lives: one test photo per
person (200 people), each replaced by its cluster average; rank-1 against the original photos
(bound: <= 1/k) and against another photo of each person (linking), by dlib and the surrogate.

Usage::

    python benchmarks/privacy_methods.py ksame
    python benchmarks/privacy_methods.py compare --limit 300
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMPARE_SPECS = [
    "mosaic", "blur", "pixelate",
    "ksame:k=10,label=ksame pixel k=10 (per image)",
    "ksame:k=10,variant=eigen,label=ksame eigen k=10 (per image)",
    "dp_pix:eps=0.5,b=8,m=16,label=dp_pix (eps=0.5 b=8 m=16)",
    "dp_pix:eps=5,b=8,m=16,label=dp_pix (eps=5 b=8 m=16)",
    "dp_blur:eps=0.5,b=8,m=16,label=dp_blur (eps=0.5 b=8 m=16 d=1e-5)",
    "dp_blur:eps=5,b=8,m=16,label=dp_blur (eps=5 b=8 m=16 d=1e-5)",
    "identity_cloak:eps=8,steps=20,label=identity_cloak (eps=8/255)",
    "identity_cloak:eps=16,steps=30,label=identity_cloak (eps=16/255)",
]


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def run_compare(limit: int, out: Path, specs: list[str]) -> None:
    import torch

    from facedeid.evaluation.report import write_report
    from facedeid.evaluation.runner import EvalConfig, Evaluator, MethodSpec

    torch.set_num_threads(2)
    config = EvalConfig(dataset="celeba-id200", split="test", limit=limit,
                        recognizers=("dlib", "surrogate"))
    started = time.time()
    results = Evaluator(config).run([MethodSpec.parse(s) for s in specs])
    write_report(results, out)
    print(f"evaluated in {time.time() - started:.0f}s; report in {out}")
    print(transfer_table(results))


def transfer_table(results: dict) -> str:
    """Privacy by both recognizers, then utility and quality, one row per method."""
    head = ["method", "faces", "SDR dlib", "SDR surr.", "rank-1 own dlib", "rank-1 own surr.",
            "rank-1 link dlib", "rank-1 link surr.", "expr. loss", "attr. acc", "det. rate",
            "SSIM", "PSNR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    entries = [dict(results["baseline"], faces=results["dataset"]["usable"])] + results["methods"]
    for entry in entries:
        p = entry["privacy"]
        d, s = p.get("dlib", {}), p.get("surrogate", {})
        services, quality = entry.get("services", {}), entry.get("quality", {})
        cells = [entry["label"], _fmt(entry.get("faces")), _fmt(d.get("sdr")), _fmt(s.get("sdr")),
                 _fmt(d.get("rank1_own_gallery")), _fmt(s.get("rank1_own_gallery")),
                 _fmt(d.get("rank1_linking")), _fmt(s.get("rank1_linking")),
                 _fmt(services.get("expression", {}).get("service_loss_rate")),
                 _fmt(services.get("attributes", {}).get("mean_attribute_accuracy")),
                 _fmt(services.get("detection", {}).get("detection_rate")),
                 _fmt(quality.get("ssim")), _fmt(quality.get("psnr"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def _person_specific_sets(faces, attributes_file: Path):
    """First test photo and first train photo of each identity, plus the CelebA 'Male' label."""
    first_test, first_train = {}, {}
    for i, (identity, is_train) in enumerate(zip(faces.identities, faces.is_train)):
        (first_train if is_train else first_test).setdefault(int(identity), i)
    people = sorted(set(first_test) & set(first_train))
    test_index = np.array([first_test[p] for p in people])
    train_index = np.array([first_train[p] for p in people])
    lines = attributes_file.read_text().split("\n")
    columns = lines[1].split()
    male = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) == len(columns) + 1:
            male[parts[0]] = int(parts[1 + columns.index("Male")]) > 0
    groups = np.array([male[str(n)] for n in faces.names[test_index]])
    return test_index, train_index, groups


def _crop_boxes(faces, size: int) -> np.ndarray:
    """Detector boxes mapped into aligned-crop coordinates, averaged (one box for every crop)."""
    from facedeid.alignment import FaceAligner
    aligner = FaceAligner(size)
    boxes = []
    for box, points in zip(faces.boxes, faces.landmarks):
        matrix = aligner.transform(points)
        corners = box.reshape(2, 2) @ matrix[:, :2].T + matrix[:, 2]
        boxes.append(corners.reshape(4))
    return np.mean(boxes, axis=0)


def run_ksame(ks: list[int]) -> None:
    import torch

    from facedeid.evaluation.recognizers import create_recognizer
    from facedeid.methods.ksame import k_same_eigen, k_same_pixel, k_same_select
    from facedeid.models.surrogate_recognizer import load_surrogate_recognizer
    from facedeid.training.recognizer import DEFAULT_ROOT, load_aligned_celeba_id200

    torch.set_num_threads(2)
    faces = load_aligned_celeba_id200()
    test_index, train_index, male = _person_specific_sets(faces, DEFAULT_ROOT / "list_attr_celeba.txt")
    originals, linking = faces.crops[test_index], faces.crops[train_index]
    box = _crop_boxes(faces.subset(test_index), originals.shape[1])
    dlib = create_recognizer("dlib")
    surrogate = load_surrogate_recognizer()

    def embed_dlib(crops):
        unique, inverse = np.unique(crops.reshape(len(crops), -1), axis=0, return_inverse=True)
        rows = dlib.embed(list(unique.reshape((-1, *crops.shape[1:]))), [box] * len(unique))
        return rows[inverse.ravel()]

    galleries = {"dlib": (embed_dlib(originals), embed_dlib(linking), "euclidean"),
                 "surrogate": (surrogate.embed(originals), surrogate.embed(linking), "cosine")}

    def rank1(name, probes, which):
        gallery = galleries[name][which]
        if galleries[name][2] == "euclidean":
            nearest = np.argmin(np.linalg.norm(probes[:, None] - gallery[None], axis=2), axis=1)
        else:
            nearest = np.argmax(probes @ gallery.T, axis=1)
        return float(np.mean(nearest == np.arange(len(probes))))

    n = len(originals)
    print(f"{n} people, one test photo each; gallery 'own' = those photos, 'link' = one train "
          f"photo each; k-Same-Select groups by CelebA 'Male' ({int(male.sum())} / {n})\n")
    head = ["operator", "k", "bound 1/k", "rank-1 own dlib", "rank-1 own surr.",
            "rank-1 link dlib", "rank-1 link surr.", "distinct outputs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    identities = np.arange(n)

    def row(label, k, output):
        emb = {"dlib": embed_dlib(output), "surrogate": surrogate.embed(output)}
        distinct = len(np.unique(output.reshape(n, -1), axis=0))
        cells = [label, str(k), "–" if k == 1 else f"{1 / k:.3f}",
                 *(f"{rank1(r, emb[r], which):.3f}" for which in (0, 1) for r in ("dlib", "surrogate")),
                 str(distinct)]
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)

    print("\n".join(lines))
    row("none (originals)", 1, originals)
    for k in ks:
        row("k-Same-Pixel", k, k_same_pixel(originals, k, identities))
        row("k-Same-Eigen (50 comp.)", k, k_same_eigen(originals, k, 50, identities))
        row("k-Same-Select (Male), pixel", k, k_same_select(originals, k, male, "pixel", identities))
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", help="evaluation harness, two recognizers")
    compare.add_argument("--limit", type=int, default=300)
    compare.add_argument("--out", type=Path, default=Path("/tmp/facedeid_privacy_eval"))
    compare.add_argument("--spec", action="append", default=None,
                         help="method spec(s) instead of the default list")
    ksame = sub.add_parser("ksame", help="dataset-level k-Same rank-1 vs the 1/k bound")
    ksame.add_argument("--k", type=int, action="append", default=None)
    args = parser.parse_args(argv)
    if args.command == "compare":
        run_compare(args.limit, args.out, args.spec or COMPARE_SPECS)
    else:
        run_ksame(args.k or [2, 3, 5, 10])


if __name__ == "__main__":
    main()
