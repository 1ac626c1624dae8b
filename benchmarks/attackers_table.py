"""Issue 13's published table: every registered method at its defaults against every attacker.

Merges ``facedeid evaluate`` runs (``results.json``; several runs when methods were evaluated
separately, e.g. after a retrain) and ``facedeid attack restore`` reports (restored rank-1 and
SDR per method) into one table per method and one per attacker, plus the privacy-utility
scatter plot (worst-case rank-1 vs expression loss, one point per method)::

    facedeid evaluate --compare blindfold blur cartoon dp_blur dp_pix gaussian_noise \\
        identity_cloak ksame laplace mask mosaic pixelate --dataset celeba-id200 --split test \\
        --recognizer dlib --recognizer faceres --recognizer surrogate --seed 0 \\
        --cache-dir runs/evalcache --out runs/attackers/all
    facedeid evaluate --method qmvae --dataset celeba-id200 --split test --recognizer dlib \\
        --recognizer faceres --recognizer surrogate --seed 0 --cache-dir runs/evalcache \\
        --out runs/attackers/qmvae
    facedeid attack restore --method mosaic --epochs 2 -o runs/restore/mosaic.json   # per method
    python benchmarks/attackers_table.py runs/attackers/*/results.json \\
        --restore runs/restore/*.json --md runs/attackers/table.md \\
        --plot docs/img/privacy_utility_methods.png

Restored figures come from the restoration attack's own run (same 40 test people, same
publisher seed 0, attacker trained on the 160 train people); its gallery is the original test
photos, so it gives the own-original rank-1 and SDR, for the recognizers it was run with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def merge(result_files: list[Path], restore_files: list[Path]) -> dict:
    """One ``results.json``-shaped dict: the first run's baseline and recognizers, every run's
    methods (a method evaluated twice: the later file wins), restored figures injected."""
    merged: dict | None = None
    methods: dict[str, dict] = {}
    for path in result_files:
        results = json.loads(path.read_text())
        if merged is None:
            merged = results
        elif [r["name"] for r in results["recognizers"]] != \
                [r["name"] for r in merged["recognizers"]]:
            raise SystemExit(f"{path}: other attackers than {result_files[0]}; rerun with the "
                             "same --recognizer list")
        for row in results["methods"]:
            methods[row["label"]] = row
    if merged is None:
        raise SystemExit("no results.json given")
    merged["methods"] = list(methods.values())
    for path in restore_files:
        report = json.loads(path.read_text())
        for row in merged["methods"]:
            # the restoration attack runs a method at its defaults; match only default rows
            if row["method"] != report["method"] or row["params"]:
                continue
            for name, figures in report["recognizers"].items():
                if name in row["privacy"]:
                    row["privacy"][name]["restored"] = {
                        "sdr": figures["restored"]["sdr"],
                        "rank1_own_gallery": figures["restored"]["rank1"],
                        "rank1_linking": None,
                        "before_restoration": {"sdr": figures["deidentified"]["sdr"],
                                               "rank1_own_gallery": figures["deidentified"]["rank1"]},
                        "attacker_epochs": report["train"]["epochs"]}
    return merged


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def method_table(results: dict) -> str:
    """One row per method: per attacker SDR / rank-1 (own original; other photos), parrot and
    restored rank-1, then utility and quality."""
    from facedeid.evaluation.report import summary_rows

    names = [r["name"] for r in results["recognizers"]]
    head = ["method"]
    for name in names:
        head += [f"{name} SDR", f"{name} rank-1 own / linking"]
    head += ["parrot rank-1 linking (" + " / ".join(names) + ")",
             "restored rank-1 own (" + " / ".join(names) + ")",
             "expr. loss", "attr. agr.", "gender agr.", "age diff (y)", "det. rate", "face SSIM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    utility = {row["label"]: row for row in summary_rows(results)}
    for entry in [results["baseline"]] + results["methods"]:
        privacy = entry["privacy"]
        cells = [entry["label"]]
        for name in names:
            p = privacy.get(name, {})
            mark = " (seen)" if p.get("attacker") == "seen in training" else ""
            cells += [_fmt(p.get("sdr")) + mark,
                      f"{_fmt(p.get('rank1_own_gallery'))} / {_fmt(p.get('rank1_linking'))}"]
        cells.append(" / ".join(_fmt(privacy.get(n, {}).get("parrot", {}).get("rank1_linking"))
                                for n in names))
        cells.append(" / ".join(_fmt(privacy.get(n, {}).get("restored", {}).get("rank1_own_gallery"))
                                for n in names))
        row = utility[entry["label"]]
        cells += [_fmt(row["expression_loss"]), _fmt(row["attribute_accuracy"]),
                  _fmt(row["gender_agreement"]), _fmt(row["age_difference"], 1),
                  _fmt(row["detection_rate"]), _fmt(row["face_ssim"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json of evaluate runs")
    parser.add_argument("--restore", nargs="*", type=Path, default=[],
                        help="JSON reports of `facedeid attack restore`")
    parser.add_argument("--md", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--plot", type=Path, help="privacy-utility scatter plot (PNG)")
    parser.add_argument("--json", type=Path, help="the merged results (JSON)")
    args = parser.parse_args(argv)

    from facedeid.evaluation.report import attacker_table, plot_privacy_utility

    results = merge(args.results, args.restore)
    dataset = results["dataset"]
    text = (f"{dataset['usable']} faces of {dataset['identities']} people "
            f"({dataset['name']}, split {dataset['split']}, {dataset['split_file']}); linking "
            f"gallery {results['linking_gallery']['size']} other photos of them.\n\n"
            + method_table(results) + "\n\n" + attacker_table(results) + "\n")
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_privacy_utility(results, args.plot)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
