"""Write an evaluation's ``results.json``, its Markdown report and the plots the report shows.

Plots (matplotlib, Agg backend, PNG): privacy vs utility scatter (worst-case rank-1 over every
attacker and attack vs expression loss, one point per method), per-expression loss bars, and a
grid of before/after samples.
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
            "rank1_worst": worst_rank1(entry),
            "tar": {far: v["tar"] for far, v in tars.items()},
            "expression_loss": services.get("expression", {}).get("service_loss_rate"),
            "attribute_accuracy": services.get("attributes", {}).get("mean_attribute_accuracy"),
            "detection_rate": services.get("detection", {}).get("detection_rate"),
            "gender_agreement": services.get("age_gender", {}).get("gender_agreement"),
            "age_difference": services.get("age_gender", {}).get("age_mean_abs_difference"),
            "ssim": entry.get("quality", {}).get("ssim"),
            "face_ssim": entry.get("quality", {}).get("face_ssim"),
            "psnr": entry.get("quality", {}).get("psnr"),
        })
    return rows


def _rank1_values(figures: dict, gallery: str) -> list[float]:
    """Every rank-1 figure of one attacker on one gallery (``"rank1_linking"`` or
    ``"rank1_own_gallery"``): plain, parrot and restored."""
    values = [figures.get(gallery)] + [figures.get(attack, {}).get(gallery)
                                       for attack in ("parrot", "restored")]
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def worst_rank1(entry: dict) -> float | None:
    """The highest rank-1 any attacker reaches on a method (plain, parrot or restored): what a
    skeptic would quote as its identification risk. On the linking gallery (other photos of
    the person) when there is one: with the own-original gallery a parrot attacker holding the
    exact photo reproduces a deterministic method's output bit for bit, which says nothing
    about telling methods apart."""
    privacy = entry.get("privacy", {}).values()
    for gallery in ("rank1_linking", "rank1_own_gallery"):
        values = [v for figures in privacy for v in _rank1_values(figures, gallery)]
        if values:
            return max(values)
    return None


def attacker_table(results: dict) -> str:
    """Per method and attacker: independence mark, SDR, rank-1 (own original, other photos),
    parrot rank-1 and restored rank-1 (when a restorer was given)."""
    restored = any("restored" in p for m in results["methods"] for p in m["privacy"].values())
    head = ["method", "attacker", "attacker is", "SDR", "rank-1 own", "rank-1 linking",
            "parrot own", "parrot linking"]
    if restored:
        head += ["restored SDR", "restored own", "restored linking"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in [results["baseline"]] + results["methods"]:
        for recognizer in results["recognizers"]:
            p = method["privacy"].get(recognizer["name"])
            if p is None:
                continue
            parrot, back = p.get("parrot", {}), p.get("restored", {})
            cells = [method["label"], recognizer["name"], p.get("attacker", "–"), _fmt(p.get("sdr")),
                     _fmt(p.get("rank1_own_gallery")), _fmt(p.get("rank1_linking")),
                     _fmt(parrot.get("rank1_own_gallery")), _fmt(parrot.get("rank1_linking"))]
            if restored:
                cells += [_fmt(back.get("sdr")), _fmt(back.get("rank1_own_gallery")),
                          _fmt(back.get("rank1_linking"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    """The main comparison table (privacy by the first recognizer, utility, quality)."""
    rows = summary_rows(results)
    fars = sorted({far for row in rows for far in row["tar"]}, key=float, reverse=True)
    recognizer = results["recognizers"][0]
    head = (["method", "faces", "fail", f"id dist ({recognizer['metric']})",
             f"SDR@{recognizer['threshold']:g}", "rank-1 own", "rank-1 linking"]
            + [f"TAR@FAR={far}" for far in fars]
            + ["expr. loss", "attr. acc", "det. rate", "gender agr.", "age diff (y)", "SSIM",
               "face SSIM", "PSNR"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], _fmt(row["faces"]), _fmt(row["failures"]), _fmt(row["id_distance"]),
                 _fmt(row["sdr"]), _fmt(row["rank1_own"]), _fmt(row["rank1_linking"])]
        cells += [_fmt(row["tar"].get(far)) for far in fars]
        cells += [_fmt(row["expression_loss"]), _fmt(row["attribute_accuracy"]),
                  _fmt(row["detection_rate"]), _fmt(row["gender_agreement"]),
                  _fmt(row["age_difference"], 2), _fmt(row["ssim"]), _fmt(row["face_ssim"]),
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
    """Scatter, one point per method: x = worst-case rank-1 (:func:`worst_rank1`: every
    attacker, plain/parrot/restored), y = utility lost (expression service loss
    rate; else 1 - attribute agreement; else 1 - SSIM when no service ran). Best: bottom left."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(results)[1:]
    if not rows:
        return None
    if any(r["expression_loss"] is not None for r in rows):
        loss, y_label = [r["expression_loss"] for r in rows], "expression loss rate (QM-VAE Eq. 8)"
    elif any(r["attribute_accuracy"] is not None for r in rows):
        loss = [None if r["attribute_accuracy"] is None else 1 - r["attribute_accuracy"]
                for r in rows]
        y_label = "attribute disagreement (1 - mean agreement)"
    else:
        loss = [None if r["ssim"] is None else 1 - r["ssim"] for r in rows]
        y_label = "1 - SSIM (whole image)"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row, y in zip(rows, loss):
        x = row["rank1_worst"]
        if x is None or y is None:
            continue
        ax.scatter(x, y, s=40)
        ax.annotate(row["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    names = ", ".join(r["name"] for r in results["recognizers"])
    ax.set_xlabel(f"worst-case rank-1, linking gallery ({names}; plain/parrot/restored; "
                  "lower = more private)", fontsize=8)
    ax.set_ylabel(y_label)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_title("privacy vs utility loss (best corner: bottom left)")
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
    if d.get("split_file"):
        lines.append(f"- split file: {d['split_file']} ({d.get('identities', '?')} identities in "
                     "the probe set)")
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
              "## Attackers", "", attacker_table(results), "",
              "Attacker is *independent* unless the method optimised against it in training "
              "(*seen in training*: its figures flatter the method). Parrot (Newton et al.): the "
              "attacker applies the same method, same parameters, fresh seed to its gallery and "
              "matches de-identified against de-identified. A face the method failed on counts as "
              "not protected (identified, not de-identified).", "",
              "Rank-1 own: gallery = the original test images, the probe's own original included "
              "(EEAE protocol). Rank-1 linking: gallery = other photos of the same people. "
              "SDR (book Eq. 3.2): fraction of outputs farther than the threshold from their "
              "original. TAR at FAR: threshold set on impostor pairs of the same comparison.", ""]
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
