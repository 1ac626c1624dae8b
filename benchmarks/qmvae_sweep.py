"""QM-VAE alpha sweep (Fig. 6, Table 4) and input-count ablation (Fig. 12) on the paper's split.

One training per alpha records the service loss rate at epochs 10/20/30/40 (so one run gives a
whole row of Fig. 6); Table 4's "coefficient of MSE" c is alpha = 1 - c, read off the same runs.
Every run is :mod:`benchmarks.qmvae_paper` with the given settings; results land in
``runs/qmvae_sweep/*.json`` and finished runs are skipped on a re-run (so the sweep can be
interrupted and continued). ``--plot`` draws Fig. 6 from whatever JSON files exist.

Run::

    python benchmarks/qmvae_sweep.py --alphas 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1 --epochs 40
    python benchmarks/qmvae_sweep.py --inputs-ablation --alphas 0.4 --epochs 40
    python benchmarks/qmvae_sweep.py --plot --report --also runs/qmvae/*.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "qmvae_sweep"
INPUT_SETS = {
    3: "mosaic:block_size=4;laplace;cartoon",  # the paper's 3 inputs: blindfold removed
    4: "blindfold;mosaic:block_size=4;laplace;cartoon",
    5: "blindfold;mosaic:block_size=4;laplace;cartoon;blur",  # AMT-GAN is not available offline
}


def run_one(alpha: float, epochs: int, inputs: str, tag: str, extra: list[str]) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import qmvae_paper

    result = OUT / f"{tag}.json"
    if result.is_file():
        print(f"{result} exists, skipping")
        return result
    eval_epochs = ",".join(str(e) for e in (10, 20, 30, 40) if e <= epochs)
    qmvae_paper.main(["--alpha", str(alpha), "--epochs", str(epochs), "--inputs", inputs,
                      "--eval-epochs", eval_epochs or str(epochs), "--out", str(OUT / f"{tag}.pt"),
                      "--json", str(result), *extra])
    return result


def plot(path: Path) -> None:
    """Fig. 6: test service loss rate against alpha, one line per epoch count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[int, list[tuple[float, float]]] = {}
    for file in sorted(OUT.glob("alpha*_inputs4.json")):
        data = json.loads(file.read_text())
        for record in data["history"]:
            if "haar_service_loss_rate" in record:
                curves.setdefault(record["epoch"], []).append(
                    (data["alpha"], record["haar_service_loss_rate"]))
    figure, axis = plt.subplots(figsize=(6, 4))
    for epoch, points in sorted(curves.items()):
        axis.plot(*zip(*sorted(points)), marker="o", label=f"{epoch} epochs")
    axis.axhline(0.14, color="gray", linestyle="--", linewidth=1, label="paper, alpha 0.4 @ 40")
    baselines = REPO / "runs" / "qmvae" / "baselines.json"  # qmvae_paper.py --baselines
    if baselines.is_file():
        floor = json.loads(baselines.read_text())["original crop"]["haar_service_loss_rate"]
        axis.axhline(floor, color="black", linestyle=":", linewidth=1,
                     label="original crop pasted back (floor)")
    axis.set_xlabel("alpha (weight of the service loss in Eq. 7)")
    axis.set_ylabel("service loss rate (Eq. 8, Haar workflow)")
    axis.set_title("QM-VAE on CelebA 801-1000 (200 test faces)", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def _final(data: dict) -> dict:
    """The last history record with metrics, merged with the run's ``final`` block."""
    last = [h for h in data.get("history") or [] if "haar_service_loss_rate" in h]
    return {**(last[-1] if last else {}), **data.get("final", {})}


def _loss_at(data: dict, epoch: int) -> str:
    for record in data.get("history") or []:
        if record.get("epoch") == epoch and "haar_service_loss_rate" in record:
            return f"{record['haar_service_loss_rate']:.3f}"
    return ""


def _metric_cells(block: dict) -> str:
    """The privacy / quality / second-service cells shared by every row of the report."""
    cells = [f"{block[key]:.3f}" for key in (
        "haar_found_rate_anonymized", "sdr_dlib_0.6", "rank1_vs_test_originals",
        "rank1_surrogate_vs_test_originals", "face_ssim")]
    cells.append(f"{block['face_psnr']:.1f}")
    # runs older than the attribute metric have none
    cells.append(f"{block['attribute_agreement']:.3f}" if "attribute_agreement" in block else "–")
    return " | ".join(cells)


def report(also: list[str]) -> None:
    """Markdown rows for docs/benchmarks.md: Fig. 6 as a table, Table 4 and the ablation, plus
    the single runs named in ``also`` (result JSON files of qmvae_paper.py)."""
    files = sorted(OUT.glob("alpha*.json")) + [Path(name) for name in also]
    loaded = {file.stem: json.loads(file.read_text()) for file in files}
    runs = {tag: data for tag, data in loaded.items() if "alpha" in data}  # training runs
    # --baselines files: one block of metrics per operator (and the "original crop" floor)
    operators = {f"{tag}: {name}": block for tag, data in loaded.items() if "alpha" not in data
                 for name, block in data.items()
                 if isinstance(block, dict) and "haar_per_class_loss_rate" in block}
    print("| run | loss @10 | @20 | @30 | @40 | last (epoch) | found | SDR@0.6 | rank-1 dlib "
          "| rank-1 CosFace | face SSIM | face PSNR | attr. agreement | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tag, data in sorted(runs.items(), key=lambda item: (item[1]["alpha"], item[0])):
        end = _final(data)
        last = f"{end['haar_service_loss_rate']:.3f} ({data.get('epochs', '?')})"
        print(f"| {tag} | " + " | ".join(_loss_at(data, e) for e in (10, 20, 30, 40))
              + f" | {last} | {_metric_cells(end)} | {data.get('wall_seconds', '')} |")
    if operators:
        print("\n| operator row | loss | found | SDR@0.6 | rank-1 dlib | rank-1 CosFace "
              "| face SSIM | face PSNR | attr. agreement |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, block in operators.items():
            print(f"| {name} | {block['haar_service_loss_rate']:.3f} | {_metric_cells(block)} |")
    expressions = ("angry", "fear", "happy", "sad", "surprise", "neutral")  # no test face: disgust
    print("\nTable 3 (loss rate per original expression, last epoch):\n")
    print("| row | all | " + " | ".join(expressions) + " |\n" + "|---" * (len(expressions) + 2)
          + "|")
    blocks = {tag: _final(data) for tag, data in runs.items()} | operators
    for name, block in blocks.items():
        per_class = block["haar_per_class_loss_rate"]
        print(f"| {name} | {block['haar_service_loss_rate']:.3f} | "
              + " | ".join(f"{per_class[e]:.3f}" for e in expressions) + " |")
    print("\nTable 4 (coefficient of the reconstruction term c = 1 - alpha):\n")
    print("| c | loss @20 | loss @40 |\n|---|---|---|")
    for tag, data in sorted(runs.items(), key=lambda item: -item[1]["alpha"]):
        if tag.startswith("alpha") and tag.endswith("_inputs4"):
            print(f"| {1 - data['alpha']:.1f} | {_loss_at(data, 20)} | {_loss_at(data, 40)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--inputs-ablation", action="store_true", help="3/4/5 inputs")
    parser.add_argument("--plot", action="store_true", help="only draw Fig. 6 from the results")
    parser.add_argument("--report", action="store_true",
                        help="only print the result tables (markdown) from the results")
    parser.add_argument("--also", nargs="*", default=[], metavar="JSON",
                        help="with --report: further result files to list")
    parser.add_argument("extra", nargs="*", help="passed to qmvae_paper.py (after --)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.plot or args.report:
        if args.plot:
            plot(REPO / "docs" / "img" / "qmvae_fig6_alpha_sweep.png")
        if args.report:
            report(args.also)
        return 0
    counts = (3, 4, 5) if args.inputs_ablation else (4,)
    for alpha in (float(a) for a in args.alphas.split(",")):
        for count in counts:
            run_one(alpha, args.epochs, INPUT_SETS[count], f"alpha{alpha:g}_inputs{count}",
                    args.extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
