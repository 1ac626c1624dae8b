"""EEAE's evaluation (seed 004 §IV): Tables IV-XI, Fig. 9, a Fig. 10-like grid, speed.

Crop level, as the paper evaluates: every method works on the same 64-px aligned crops the
registered methods get from the pipeline, and every predictor and recognizer looks at those
crops. Two test sets:

* ``celeba-test`` — the paper's CelebA protocol: celeba-first10k files 008001-010000, minus
  every celeba-id200 person (so none of the 40 identity-disjoint test people); the first 1,000
  of its 1,949 faces by default (``--celeba-test-limit``; the CPU budget);
* ``id200-disjoint`` — the 1,200 photos of the 40 identity-disjoint test people of celeba-id200
  (1,195 with a face), which no model of the project was trained on.

Methods: the original; EEAE (PRN) and its SPRN ablation for the sets g, s, b, y, gs, gsb, gsbe;
k-Same-M (dataset level, appearance model fitted on the test set itself, k = 2, 5, 10);
k-Same-Net (dataset level in the project's face generator's latent space, k = 2, 5, 10,
attribute-aware as Meden et al.: k-Same inside each group of equal ground-truth labels of the
set, groups smaller than k pooled into one mixed group); the identity cloak (LowKey stand-in,
PGD against the surrogate recognizer at its defaults, eps 8).

Figures per method and set:

* attribute accuracy against CelebA's labels with the set's FSN (the network EEAE trained
  against: Tables IV-VII, X) and with the project's AttributeNet (``attributes_celeba.pt``,
  never used by EEAE; trained on celeba-first10k including the celeba-test photos, never on
  the id200-disjoint people);
* rank-1 with the gallery = the original test crops and probes = the de-identified ones
  (Tables VIII-IX, XI) for faceres (EEAE's PEN: "seen in training"), dlib and the surrogate
  (independent; the cloak optimised against the surrogate, so that column is seen for it).

    python benchmarks/eeae_paper.py --out runs/eeae_paper --sweep runs/eeae/sweep   # ~40 min
    python benchmarks/eeae_paper.py --out runs/eeae_paper --limit 200  # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import faces_per_second  # noqa: E402

SETS = ("g", "s", "b", "y", "gs", "gsb", "gsbe")
SINGLE, MULTI = SETS[:4], SETS[4:]
KS = (2, 5, 10)
RECOGNIZERS = ("faceres", "dlib", "surrogate")
ATTRIBUTES = ("Male", "Smiling", "Big_Nose", "Young", "Eyeglasses")


def test_sets(limit: int | None) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``{name: (crops, {attribute: bool labels})}`` for the two test sets."""
    from facedeid.io.datasets import default_data_root, read_celeba_attributes
    from facedeid.training.attributes import select_records
    from facedeid.training.eeae import paper_crops, split_crops
    from facedeid.training.face_crops import cached_aligned_crops

    root = default_data_root()
    cache = REPO / "runs" / "gen_crops"
    crops, keys, table = paper_crops(root, cache, 64)
    _, test = split_crops(crops, keys)
    _, held_records, _, _ = select_records(root)
    held, held_keys, _ = cached_aligned_crops(cache, "heldout", held_records, 64)
    _, id200_table = read_celeba_attributes(root / "celeba-id200" / "list_attr_celeba.txt")

    def labelled(images, names, source):
        labels = {a: np.array([source[n.partition("@")[0]][a] for n in names]) for a in ATTRIBUTES}
        return images, labels

    sets = {"celeba-test": labelled(crops[test], [keys[i] for i in test], table),
            "id200-disjoint": labelled(held, held_keys, id200_table)}
    if limit:
        sets = {name: (images[:limit], {a: v[:limit] for a, v in labels.items()})
                for name, (images, labels) in sets.items()}
    return sets


def k_same_net_by_attributes(crops, labels, code, k, encoder, generator) -> np.ndarray:
    """Meden et al.'s attribute-aware k-Same-Net: k-Same inside groups of equal labels."""
    from facedeid.methods.ksame_net import k_same_net
    from facedeid.models.eeae import attribute_names

    names = attribute_names(code)
    keys = np.array(["".join("1" if labels[a][i] else "0" for a in names)
                     for i in range(len(crops))])
    small = [g for g in np.unique(keys) if (keys == g).sum() < k]
    keys[np.isin(keys, small)] = "mixed"
    if (keys == "mixed").sum() and (keys == "mixed").sum() < k:  # too few to stand alone
        largest = max(np.unique(keys[keys != "mixed"]), key=lambda g: (keys == g).sum())
        keys[keys == "mixed"] = largest
    out = np.empty_like(crops)
    for group in np.unique(keys):
        members = np.flatnonzero(keys == group)
        out[members] = k_same_net(crops[members], k, encoder, generator)
    return out


def deidentify_all(crops, labels) -> dict[str, np.ndarray]:
    """Every method's output on one test set, keyed by a row label."""
    from facedeid.methods import create_method
    from facedeid.methods.identity_cloak import pgd_identity_cloak
    from facedeid.methods.ksame_m import k_same_m
    from facedeid.methods.ksame_net import DEFAULT_GENERATOR
    from facedeid.models.face_generator import load_generator
    from facedeid.models.surrogate_recognizer import load_surrogate_recognizer

    outputs = {"original": crops}
    for code in SETS:
        for variant in ("prn", "sprn"):
            method = create_method("eeae", attributes=code, variant=variant)
            outputs[f"{variant}-{code}"] = method.network.anonymize(crops)
    fallbacks = {}
    for k in KS:
        outputs[f"ksame_m-k{k}"], fell_back = k_same_m(crops, k)
        fallbacks[f"ksame_m-k{k}"] = int(fell_back.sum())
    encoder, generator, _ = load_generator(DEFAULT_GENERATOR)
    for code in MULTI:
        for k in KS:
            outputs[f"ksame_net-{code}-k{k}"] = k_same_net_by_attributes(
                crops, labels, code, k, encoder, generator)
    outputs["cloak"] = pgd_identity_cloak(crops, load_surrogate_recognizer(),
                                          rng=np.random.default_rng(0))
    print(json.dumps({"ksame_m_pixel_fallbacks": fallbacks}), flush=True)
    return outputs


class Attackers:
    """faceres, dlib and the surrogate on aligned crops; dlib's landmarks come from the
    original crop (the attacker knows where the face was, as in ``facedeid evaluate``)."""

    def __init__(self):
        from facedeid.evaluation.recognizers import create_recognizer
        from facedeid.models.faceres import load_faceres
        from facedeid.models.surrogate_recognizer import load_surrogate_recognizer

        self.faceres = load_faceres()
        self.surrogate = load_surrogate_recognizer()
        self.dlib = create_recognizer("dlib")

    def embed(self, name: str, crops: np.ndarray, originals: np.ndarray) -> np.ndarray:
        import cv2

        if name == "surrogate":
            return self.surrogate.embed(crops)
        if name == "faceres":
            big = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_LINEAR)
                            for c in crops])
            return self.faceres.analyze(big).descriptor.numpy()
        scale = 2  # dlib's 5-point model and chips want more than 64 px
        big = [cv2.resize(c, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
               for c in crops]
        reference = [cv2.resize(c, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
                     for c in originals]
        side = crops.shape[1] * scale
        box = np.array([0.12, 0.12, 0.88, 0.92]) * side  # the aligner puts the face here
        return self.dlib.embed(big, [box] * len(big), reference)


def rank1(probes: np.ndarray, gallery: np.ndarray, metric: str) -> float:
    from facedeid.evaluation.privacy import rank1_identification_rate
    ids = np.arange(len(probes))
    return rank1_identification_rate(probes, ids, gallery, ids, metric=metric)


def attribute_scores(outputs: dict[str, np.ndarray], labels) -> dict[str, dict]:
    """Per method: each set's FSN accuracy (mean over its attributes and per attribute) and
    the independent AttributeNet's accuracy per attribute."""
    import torch

    from facedeid.evaluation.services.attributes import load_attribute_model
    from facedeid.methods.eeae import CHECKPOINT_DIR
    from facedeid.models.eeae import load_eeae
    from facedeid.models.tensors import crops_to_tensor

    fsns = {code: load_eeae(CHECKPOINT_DIR / f"{code}.pt")[0]["fsn"] for code in SETS}
    independent = load_attribute_model()
    scores = {}
    for row, crops in outputs.items():
        faces = crops_to_tensor(crops)
        entry = {"fsn": {}, "independent": {}}
        for code, fsn in fsns.items():
            predicted = fsn.predict(faces).numpy()
            per = {a: float((predicted[:, i] == labels[a]).mean())
                   for i, a in enumerate(fsn.attributes)}
            entry["fsn"][code] = {"mean": float(np.mean(list(per.values()))), **per}
        with torch.no_grad():
            present = (independent(faces) > 0).numpy()
        entry["independent"] = {a: float((present[:, independent.attributes.index(a)]
                                          == labels[a]).mean()) for a in ATTRIBUTES}
        scores[row] = entry
    return scores


def privacy_scores(outputs, attackers: Attackers) -> dict[str, dict]:
    """Rank-1 per recognizer for every row except k-Same-Net's gs and gsbe groupings (the CPU
    budget: their clusters differ from gsb's only in which faces are averaged together)."""
    metric = {"faceres": "cosine", "dlib": "euclidean", "surrogate": "cosine"}
    originals = outputs["original"]
    gallery = {name: attackers.embed(name, originals, originals) for name in RECOGNIZERS}
    scores = {}
    for row, crops in outputs.items():
        if row.startswith(("ksame_net-gs-", "ksame_net-gsbe-")):
            continue
        scores[row] = {name: rank1(attackers.embed(name, crops, originals), gallery[name],
                                   metric[name]) for name in RECOGNIZERS}
        print(json.dumps({"rank1": row, **scores[row]}), flush=True)
    return scores


def speed() -> dict:
    """Faces per second through the registered eeae method's network, batch 1 and 32, next to
    Private-Encoder (the peer) in the same run."""
    import torch

    from facedeid.methods import create_method

    eeae = create_method("eeae", attributes="gsb").network
    private_encoder = create_method("private_encoder").model
    crops = np.random.default_rng(0).integers(0, 255, (96, 64, 64, 3), dtype=np.uint8)
    report = {"threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    for batch in (1, 32):
        for name, run in (("eeae", lambda b: eeae.anonymize(crops, b)),
                          ("private_encoder", lambda b: private_encoder.anonymize(crops, 0.2, b))):
            report[f"{name}_batch{batch}_faces_per_s"] = faces_per_second(
                lambda: run(batch), len(crops))
    report["load_after"] = os.getloadavg()
    return report


def training_curves(path: Path) -> None:
    """Fig. 9: FSN accuracy and PEN rank-1 of the de-identified test crops during PRN training."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facedeid.methods.eeae import CHECKPOINT_DIR
    from facedeid.models.eeae import load_eeae

    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for code in SETS:
        history = load_eeae(CHECKPOINT_DIR / f"{code}.pt")[1]["history"].get("prn", [])
        steps = [h["step"] for h in history]
        axes[0].plot(steps, [h["test_accuracy"] for h in history], label=code)
        axes[1].plot(steps, [h["test_pen_rank1"] for h in history], label=code)
    axes[0].set(xlabel="PRN training step", ylabel="FSN accuracy on de-identified test crops",
                title="attribute accuracy while training (Fig. 9a)")
    axes[1].axhline(1 / 256, color="grey", linestyle="--", label="chance (1 of 256)")
    axes[1].set(xlabel="PRN training step", ylabel="PEN (faceres 160 px) rank-1",
                title="re-identification while training (Fig. 9b)", ylim=(0, 0.05))
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(ncol=2, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def before_after_grid(outputs: dict[str, np.ndarray], path: Path, count: int = 6) -> None:
    """Fig. 10-like: rows are faces of never-seen people, columns methods (labelled)."""
    import cv2
    from PIL import Image

    columns = ["original", "prn-g", "prn-s", "prn-b", "prn-y", "prn-gsb", "prn-gsbe",
               "sprn-gsb", "ksame_m-k5", "ksame_net-gsb-k5", "cloak"]
    scale = 2
    tiles = []
    for index in range(count):
        tiles.append(np.hstack([cv2.resize(outputs[c][index], None, fx=scale, fy=scale,
                                           interpolation=cv2.INTER_NEAREST) for c in columns]))
    grid = np.vstack(tiles)
    header = np.full((22, grid.shape[1], 3), 255, np.uint8)
    for position, name in enumerate(columns):
        cv2.putText(header, name, (position * 64 * scale + 3, 15), cv2.FONT_HERSHEY_SIMPLEX,
                    0.36, (0, 0, 0), 1, cv2.LINE_AA)
    Image.fromarray(np.vstack([header, grid])).save(path)


def tables(results: dict) -> str:
    lines = []
    for set_name, result in results["sets"].items():
        attributes, privacy = result["attributes"], result["rank1"]
        lines += [f"\n### {set_name} ({result['faces']} faces)\n",
                  "Single attribute (Tables IV-VI, X): accuracy % of the set's FSN / of the "
                  "independent AttributeNet\n",
                  "| set | original | EEAE (PRN) | SPRN |", "|---|---|---|---|"]
        for code in SINGLE:
            name = attributes["original"]["fsn"][code]
            attribute = [a for a in name if a != "mean"][0]
            cell = lambda row: (f"{100 * attributes[row]['fsn'][code]['mean']:.1f} / "  # noqa: E731
                                f"{100 * attributes[row]['independent'][attribute]:.1f}")
            lines.append(f"| {code} ({attribute}) | {cell('original')} | {cell('prn-' + code)} "
                         f"| {cell('sprn-' + code)} |")
        lines += ["\nMulti attribute (Table VII, X): mean accuracy % of the set's FSN\n",
                  "| set | original | EEAE | SPRN | k-Same-M k=2/5/10 | k-Same-Net k=2/5/10 | cloak |",
                  "|---|---|---|---|---|---|---|"]
        for code in MULTI:
            acc = lambda row: f"{100 * attributes[row]['fsn'][code]['mean']:.1f}"  # noqa: E731
            lines.append(
                f"| {code} | {acc('original')} | {acc('prn-' + code)} | {acc('sprn-' + code)} | "
                + "/".join(acc(f"ksame_m-k{k}") for k in KS) + " | "
                + "/".join(acc(f"ksame_net-{code}-k{k}") for k in KS) + f" | {acc('cloak')} |")
        lines += ["\nRank-1 % (gallery = original test crops; Tables VIII-IX, XI). faceres is "
                  "EEAE's PEN (seen in training); the cloak optimised against the surrogate\n",
                  "| method | faceres | dlib | surrogate | mean of independent |",
                  "|---|---|---|---|---|"]
        for row, values in privacy.items():
            independent = np.mean([values["dlib"], values["surrogate"]])
            lines.append(f"| {row} | {100 * values['faceres']:.2f} | {100 * values['dlib']:.2f} "
                         f"| {100 * values['surrogate']:.2f} | {100 * independent:.2f} |")
    if results.get("alpha2_sweep"):
        lines += ["\n### alpha2 sweep, PRN-gsb on id200-disjoint\n",
                  "| alpha2 | FSN gsb % | independent Male / Smiling / Big_Nose % | rank-1 % "
                  "faceres / dlib / surrogate |", "|---|---|---|---|"]
        for row in results["alpha2_sweep"]:
            lines.append(f"| {row['alpha2']:g} | {100 * row['fsn_gsb']:.1f} | "
                         + " / ".join(f"{100 * v:.1f}" for v in row["independent"].values())
                         + " | " + " / ".join(f"{100 * row['rank1'][n]:.2f}" for n in RECOGNIZERS)
                         + " |")
    return "\n".join(lines)


def alpha2_sweep(folder: Path, crops, labels, attackers: Attackers) -> list[dict]:
    """The PRN-gsb trade-off curve: each ``gsb_a2_<alpha2>.pt`` of ``folder`` (trained with
    ``--fsn-from`` the shipped gsb FSN, so only alpha2 differs) next to the shipped model."""
    from facedeid.methods import create_method
    from facedeid.methods.eeae import CHECKPOINT_DIR
    from facedeid.models.eeae import load_eeae

    rows = []
    paths = sorted(p for p in folder.glob("gsb_a2_*.pt") if not p.name.endswith(".work.pt"))
    paths.append(CHECKPOINT_DIR / "gsb.pt")
    for path in paths:
        alpha2 = load_eeae(path)[1]["loss_weights"]["alpha2"]
        private = create_method("eeae", attributes="gsb", checkpoint=str(path)).network \
            .anonymize(crops)
        outputs = {"original": crops, "prn-gsb": private}
        accuracy = attribute_scores(outputs, labels)["prn-gsb"]
        privacy = privacy_scores(outputs, attackers)["prn-gsb"]
        rows.append({"alpha2": alpha2, "checkpoint": str(path),
                     "fsn_gsb": accuracy["fsn"]["gsb"]["mean"],
                     "independent": {a: accuracy["independent"][a]
                                     for a in ("Male", "Smiling", "Big_Nose")},
                     "rank1": privacy})
    return sorted(rows, key=lambda row: row["alpha2"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "eeae_paper")
    parser.add_argument("--limit", type=int, default=None, help="first N faces of each set")
    parser.add_argument("--celeba-test-limit", type=int, default=1000,
                        help="first N faces of celeba-test (default 1000 of 1,949: CPU budget)")
    parser.add_argument("--img", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--reuse-sets", action="store_true",
                        help="take both sets' tables from OUT/results.json and run only the "
                             "sweep, curves and speed")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="folder of gsb_a2_<alpha2>.pt PRNs for the alpha2 curve")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    attackers = Attackers()
    results = {"limit": args.limit, "sets": {}, "load_start": os.getloadavg()}
    previous = args.out / "results.json"
    if args.reuse_sets and previous.is_file():
        results["sets"] = json.loads(previous.read_text())["sets"]
    for set_name, (crops, labels) in test_sets(args.limit).items():
        if set_name in results["sets"]:
            if set_name == "id200-disjoint" and args.sweep is not None:
                results["alpha2_sweep"] = alpha2_sweep(args.sweep, crops, labels, attackers)
            continue
        if set_name == "celeba-test" and args.celeba_test_limit:
            crops = crops[:args.celeba_test_limit]
            labels = {a: v[:args.celeba_test_limit] for a, v in labels.items()}
        outputs = deidentify_all(crops, labels)
        results["sets"][set_name] = {"faces": len(crops),
                                     "attributes": attribute_scores(outputs, labels),
                                     "rank1": privacy_scores(outputs, attackers)}
        # written after every set, so a later failure keeps what was measured
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        if set_name == "id200-disjoint":
            before_after_grid(outputs, args.img / "eeae_grid.png")
            if args.sweep is not None:
                results["alpha2_sweep"] = alpha2_sweep(args.sweep, crops, labels, attackers)
    training_curves(args.img / "eeae_training.png")
    results["speed"] = speed()
    results["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    report = tables(results)
    (args.out / "tables.md").write_text(report)
    print(report)
    print(json.dumps(results["speed"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
