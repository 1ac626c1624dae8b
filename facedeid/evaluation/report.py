"""Write an evaluation's ``results.json``, its Markdown report and the plots the report shows.

Plots (matplotlib, Agg backend, PNG): privacy vs utility scatter, per-expression loss bars,
and a grid of before/after samples.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def _clean_for_json(value):
    if isinstance(value, dict):
        return {k: _clean_for_json(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_clean_for_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.generic):
        return _clean_for_json(value.item())
    return value


def summary_rows(results: dict) -> list[dict]:
    """One flat dict per method (and the no-de-identification baseline) for tables and plots."""
    first = results["recognizers"][0]["name"]
    rows = []
    for entry in [dict(results["baseline"], faces=results["dataset"]["usable"], failures=0,
                       services={}, quality={})] + results["methods"]:
        p = entry["privacy"].get(first, {})
        services = entry.get("services", {})
        tars = p.get("tar_at_far", {})
        rows.append({
            "label": entry["label"], "faces": entry.get("faces"), "failures": entry.get("failures"),
            "id_distance": p.get("identity_distance_mean"), "sdr": p.get("sdr"),
            "rank1_own": p.get("rank1_own_gallery"), "rank1_linking": p.get("rank1_linking"),
            "tar": {far: v["tar"] for far, v in tars.items()},
            "expression_loss": services.get("expression", {}).get("service_loss_rate"),
            "attribute_accuracy": services.get("attributes", {}).get("mean_attribute_accuracy"),
            "detection_rate": services.get("detection", {}).get("detection_rate"),
            "ssim": entry.get("quality", {}).get("ssim"),
            "face_ssim": entry.get("quality", {}).get("face_ssim"),
            "psnr": entry.get("quality", {}).get("psnr"),
        })
    return rows


def markdown_table(results: dict) -> str:
    """The main comparison table (privacy by the first recognizer, utility, quality)."""
    rows = summary_rows(results)
    fars = sorted({far for row in rows for far in row["tar"]}, key=float, reverse=True)
    recognizer = results["recognizers"][0]
    head = (["method", "faces", "fail", f"id dist ({recognizer['metric']})",
             f"SDR@{recognizer['threshold']:g}", "rank-1 own", "rank-1 linking"]
            + [f"TAR@FAR={far}" for far in fars]
            + ["expr. loss", "attr. acc", "det. rate", "SSIM", "face SSIM", "PSNR"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], _fmt(row["faces"]), _fmt(row["failures"]), _fmt(row["id_distance"]),
                 _fmt(row["sdr"]), _fmt(row["rank1_own"]), _fmt(row["rank1_linking"])]
        cells += [_fmt(row["tar"].get(far)) for far in fars]
        cells += [_fmt(row["expression_loss"]), _fmt(row["attribute_accuracy"]),
                  _fmt(row["detection_rate"]), _fmt(row["ssim"]), _fmt(row["face_ssim"]),
                  _fmt(row["psnr"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)



def _save_figure(fig, path: Path, dpi: int) -> Path:
    """Lay out, write and close a figure (closing frees it: reports draw many)."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

def plot_privacy_utility(results: dict, path: Path) -> Path | None:
    """Scatter: x = identification risk (rank-1), y = utility kept (1 - expression loss, or
    attribute accuracy, or SSIM when no service ran)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(results)[1:]
    if not rows:
        return None
    risk_key = "rank1_linking" if any(r["rank1_linking"] is not None for r in rows) else "rank1_own"
    if any(r["expression_loss"] is not None for r in rows):
        utility = [None if r["expression_loss"] is None else 1 - r["expression_loss"] for r in rows]
        y_label = "expression kept (1 - service loss rate)"
    elif any(r["attribute_accuracy"] is not None for r in rows):
        utility, y_label = [r["attribute_accuracy"] for r in rows], "mean attribute accuracy"
    else:
        utility, y_label = [r["ssim"] for r in rows], "SSIM (whole image)"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row, y in zip(rows, utility):
        x = row[risk_key]
        if x is None or y is None:
            continue
        ax.scatter(x, y, s=40)
        ax.annotate(row["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{risk_key.replace('_', ' ')} ({results['recognizers'][0]['name']}; lower = more private)")
    ax.set_ylabel(y_label)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_title("privacy vs utility (best corner: top left)")
    return _save_figure(fig, path, dpi=120)


def plot_per_expression(results: dict, path: Path) -> Path | None:
    """Grouped bars: expression service loss rate per expression class and method (Table 3 layout)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_method = {m["label"]: m.get("services", {}).get("expression", {}).get("per_class_loss_rate")
                  for m in results["methods"]}
    per_method = {k: v for k, v in per_method.items() if isinstance(v, dict) and v}
    if not per_method:
        return None
    classes = sorted({c for v in per_method.values() for c, x in v.items() if x is not None})
    if not classes:
        return None
    width = 0.8 / len(per_method)
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 1.1) + 2.5, 4))
    for k, (label, values) in enumerate(per_method.items()):
        heights = [values.get(c) if values.get(c) is not None else np.nan for c in classes]
        ax.bar(np.arange(len(classes)) + k * width - 0.4 + width / 2, heights, width, label=label)
    ax.set_xticks(np.arange(len(classes)), classes)
    ax.set_ylabel("service quality loss rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("expression loss per class (QM-VAE Table 3 layout)")
    return _save_figure(fig, path, dpi=120)


def plot_samples(samples: dict, path: Path) -> Path | None:
    """Grid: first row the originals, then one row per method (blank where the method failed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    originals = samples.get("original", [])
    if not originals:
        return None
    rows = [("original", originals)] + list(samples.get("methods", {}).items())
    cols = len(originals)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols + 1.5, 1.9 * len(rows)),
                             squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            image = images[c] if c < len(images) else None
            if image is not None:
                ax.imshow(image)
            else:
                ax.text(0.5, 0.5, "failed", ha="center", va="center", transform=ax.transAxes)
            if c == 0:
                ax.set_ylabel(label[:22], fontsize=8)
    return _save_figure(fig, path, dpi=110)


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the PNG plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"results": out_dir / "results.json", "report": out_dir / "report.md"}
    files["results"].write_text(json.dumps(_clean_for_json(results), indent=2))
    plots = {"privacy_utility": plot_privacy_utility(results, out_dir / "privacy_utility.png"),
             "per_expression": plot_per_expression(results, out_dir / "per_expression.png"),
             "samples": plot_samples(results.get("_samples", {}), out_dir / "samples.png")}
    files.update({k: v for k, v in plots.items() if v is not None})
    files["report"].write_text(render_markdown(results, plots))
    return files


def render_markdown(results: dict, plots: dict[str, Path | None]) -> str:
    d, g, c = results["dataset"], results.get("linking_gallery", {}), results["config"]
    lines = [f"# facedeid evaluation: {d['name']} ({d.get('split') or 'all'})", ""]
    lines.append(f"- images: {d['records']}; usable faces: {d['usable']}; excluded (no face on the "
                 f"original, detector {c['detector']}): {d['excluded_no_face']}; unreadable: "
                 f"{len(d['unreadable'])}")
    rec = ", ".join(f"{r['name']} ({r['metric']}, threshold {r['threshold']:g})"
                    for r in results["recognizers"])
    lines.append(f"- attacker: {rec}; embeddings at the original face location")
    if g.get("size"):
        lines.append(f"- linking gallery: {g['size']} other photos of {g['identities']} probe "
                     f"identities (cap {g.get('per_identity_cap')} per person)")
    else:
        lines.append("- linking gallery: none (the dataset has no other photos of these people)")
    lines.append(f"- services: {', '.join(results['services_available']) or 'none'} "
                 f"(crop: {c['service_crop']})")
    for name, error in results.get("service_errors", {}).items():
        lines.append(f"  - service {name} not run: {error}")
    lines.append(f"- total time: {results['timings']['total_s']:.1f} s")
    lines += ["", "## Summary", "", markdown_table(results), "",
              "Rank-1 own: gallery = the original test images, the probe's own original included "
              "(EEAE protocol). Rank-1 linking: gallery = other photos of the same people. "
              "SDR (book Eq. 3.2): fraction of outputs farther than the threshold from their "
              "original. TAR at FAR: threshold set on impostor pairs of the same comparison.", ""]
    if len(results["recognizers"]) > 1:
        lines += ["## Other recognizers", ""]
        for r in results["recognizers"][1:]:
            lines.append(f"### {r['name']}")
            lines.append("| method | id dist | SDR | rank-1 own | rank-1 linking |")
            lines.append("|---|---|---|---|---|")
            for m in [results["baseline"]] + results["methods"]:
                p = m["privacy"].get(r["name"], {})
                lines.append(f"| {m['label']} | {_fmt(p.get('identity_distance_mean'))} | "
                             f"{_fmt(p.get('sdr'))} | {_fmt(p.get('rank1_own_gallery'))} | "
                             f"{_fmt(p.get('rank1_linking'))} |")
            lines.append("")
    for key, title in (("privacy_utility", "Privacy vs utility"),
                       ("per_expression", "Expression loss per class"),
                       ("samples", "Samples")):
        if plots.get(key) is not None:
            lines += [f"## {title}", "", f"![{title}]({Path(plots[key]).name})", ""]
    failed = [m for m in results["methods"] if m["failures"]]
    if failed:
        lines += ["## Failures", ""]
        for m in failed:
            lines.append(f"- {m['label']}: {m['failures']} image(s) failed, e.g. "
                         + "; ".join(f"{f['file']}: {f['error']}" for f in m["failure_details"][:3]))
        lines.append("")
    return "\n".join(lines)
