"""Private-Encoder's evaluation (seed 003 §4) on the identity-disjoint celeba-id200 test people.

Runs ``facedeid evaluate`` once over every β (0 to 1 by 0.1) and a parameter sweep of blur and
mosaic, on the same test faces, against dlib and the surrogate (never used in training) and
faceres (the training identity network, marked "seen in training"); then writes

* Fig. 3-5 as one PNG: face SSIM / MSE / embedding-Fréchet distance, Id_Similarity and
  De-Identify rate per recognizer, and detection rate (dlib HOG, not used in training) vs β;
* Tables 1-3 (MSE, SSIM, Fréchet at Id_Similarity ~0.1 / 0.2 / 0.4, blur and mosaic at the
  sweep setting closest to the same Id_Similarity), Table 4 (Id_Similarity at SSIM ~0.65) and
  Table 5 (detection rate at SSIM ~0.65), per independent recognizer;
* the targets: Spearman of Id_Similarity vs β, De-Identify rate / SSIM / detection at β = 0.2,
  attribute agreement at β = 0.2;
* the before/after grid (β = 0, 0.2, 0.4, 0.6, 1.0) and inference speed at batch 1 and 32
  next to QM-VAE's in the same run.

Id_Similarity is the cosine similarity of the recognizer's embeddings of the original and the
output at the known face location (1 - the evaluator's cosine distance); De-Identify rate is
the evaluator's SDR (distance above the recognizer's threshold: dlib 0.6 euclidean, surrogate
0.77 cosine distance, faceres 0.5).

    python benchmarks/private_encoder_paper.py --limit 400 --out runs/pe_paper
    python benchmarks/private_encoder_paper.py --out runs/pe_paper --skip-eval   # tables again
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import faces_per_second  # noqa: E402

BETAS = [round(0.1 * i, 1) for i in range(11)]
BLUR_KERNELS = (9, 33, 61)
MOSAIC_BLOCKS = (4, 8, 14)
# Table 6 (DeepPrivacy and CIAGAN are not available offline): the project's other methods at
# their defaults on the same faces.
OTHERS = ("ksame", "ksame_net", "qmvae", "dp_pix")
RECOGNIZERS = ("dlib", "surrogate", "faceres")
INDEPENDENT = ("dlib", "surrogate")


def specs() -> list[str]:
    rows = [f"private_encoder:beta={beta},label=pe_beta_{beta}" for beta in BETAS]
    rows += [f"blur:kernel_size={k},label=blur_k{k}" for k in BLUR_KERNELS]
    rows += [f"mosaic:block_size={b},label=mosaic_b{b}" for b in MOSAIC_BLOCKS]
    rows += [f"{name}:label=default_{name}" for name in OTHERS]
    return rows


def run_evaluation(out: Path, limit: int | None, cache_dir: str) -> Path:
    command = [sys.executable, "-m", "facedeid", "evaluate", "--compare", *specs(),
               "--dataset", "celeba-id200", "--split", "test", "--seed", "0", "--no-parrot",
               "--services", "detection,attributes", "--cache-dir", cache_dir,
               "--out", str(out / "sweep")]
    for name in RECOGNIZERS:
        command += ["--recognizer", name]
    if limit:
        command += ["--limit", str(limit)]
    print(" ".join(command), flush=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    (out / "sweep_run.json").write_text(json.dumps({
        "command": command, "seconds": round(time.perf_counter() - started, 1),
        "load_before": load_before, "load_after": os.getloadavg()}, indent=1))
    return out / "sweep" / "results.json"


def row_metrics(row: dict) -> dict:
    """The paper's columns for one evaluated method row."""
    quality = row["quality"]
    services = row.get("services", {})
    out = {"face_ssim": quality["face_ssim"], "face_mse": quality["face_mse"],
           "ssim": quality["ssim"], "mse": quality["mse"],
           "detection": services.get("detection", {}).get("detection_rate"),
           "attributes": services.get("attributes", {}).get("attribute_accuracy", {})}
    for name, privacy in row["privacy"].items():
        out[f"idsim_{name}"] = 1.0 - privacy["cosine_distance_mean"]
        out[f"distance_{name}"] = privacy["identity_distance_mean"]
        out[f"deid_{name}"] = privacy["sdr"]
        out[f"rank1_{name}"] = privacy["rank1_own_gallery"]
        out[f"frechet_{name}"] = row.get("embedding_frechet_distance", {}).get(name)
        out[f"attacker_{name}"] = privacy.get("attacker", "")
    return out


def at_level(rows: dict[str, dict], key: str, level: float, columns: list[str]) -> dict:
    """The ``columns`` of a swept method family at ``key == level``, linearly interpolated
    between the two settings that bracket the level ("search their parameter"); outside the
    swept range the nearest setting is given and flagged."""
    ordered = sorted(rows.items(), key=lambda item: item[1][key])
    values = [m[key] for _, m in ordered]
    for (low_label, low), (high_label, high) in zip(ordered, ordered[1:]):
        if low[key] <= level <= high[key]:
            span = high[key] - low[key]
            weight = 0.0 if span == 0 else (level - low[key]) / span
            out = {c: low[c] + weight * (high[c] - low[c]) for c in columns}
            return {**out, "setting": f"{low_label}..{high_label}", "in_range": True}
    label, nearest = min(ordered, key=lambda item: abs(item[1][key] - level))
    return {**{c: nearest[c] for c in columns}, "setting": label, "in_range": False,
            "range": (round(min(values), 3), round(max(values), 3))}


def families(results: dict) -> dict[str, dict[str, dict]]:
    grouped: dict[str, dict[str, dict]] = {"pe": {}, "blur": {}, "mosaic": {}, "default": {}}
    for row in results["methods"]:
        family = row["label"].split("_")[0]
        if family in grouped:
            grouped[family][row["label"]] = row_metrics(row)
    return grouped


def tables(grouped: dict[str, dict[str, dict]]) -> str:
    from scipy.stats import spearmanr

    pe = grouped["pe"]
    betas = [float(label.rsplit("_", 1)[1]) for label in pe]
    lines = ["### β sweep (Fig. 3-5 as numbers)", "",
             "| β | face SSIM | face MSE | " + " | ".join(
                 f"Id_Sim {n} | De-Id {n}" for n in RECOGNIZERS) + " | detection |",
             "|---|---|---|" + "---|---|" * len(RECOGNIZERS) + "---|"]
    for beta, (label, m) in zip(betas, pe.items()):
        cells = " | ".join(f"{m[f'idsim_{n}']:.3f} | {m[f'deid_{n}']:.3f}" for n in RECOGNIZERS)
        lines.append(f"| {beta:.1f} | {m['face_ssim']:.3f} | {m['face_mse']:.0f} | {cells} | "
                     f"{m['detection']:.3f} |")
    lines += ["", "Spearman correlation of Id_Similarity with β (11 points): " + ", ".join(
        f"{n} {spearmanr(betas, [m[f'idsim_{n}'] for m in pe.values()]).statistic:.3f}"
        for n in RECOGNIZERS) + " (faceres: seen in training).", ""]
    for recognizer in INDEPENDENT:
        distance = f"distance_{recognizer}"
        columns = [distance, "face_mse", "face_ssim", f"frechet_{recognizer}",
                   f"idsim_{recognizer}", f"deid_{recognizer}", "detection"]
        lines += [f"### Tables 1-3: blur and mosaic at Private-Encoder's identity level "
                  f"({recognizer})", "",
                  f"Blur and mosaic interpolated between the two swept settings whose mean "
                  f"{recognizer} identity distance brackets Private-Encoder's at that β.", "",
                  "| PE β | method (settings) | distance | Id_Sim | face MSE | face SSIM | "
                  "Fréchet |", "|---|---|---|---|---|---|---|"]
        for beta in (0.0, 0.2, 0.4):
            reference = pe.get(f"pe_beta_{beta}")
            if reference is None:
                continue
            lines.append(f"| {beta} | Private-Encoder | {reference[distance]:.3f} | "
                         f"{reference[f'idsim_{recognizer}']:.3f} | {reference['face_mse']:.0f} | "
                         f"{reference['face_ssim']:.3f} | {reference[f'frechet_{recognizer}']:.3f} |")
            for family in ("blur", "mosaic"):
                m = at_level(grouped[family], distance, reference[distance], columns)
                flag = "" if m["in_range"] else f" (outside swept range {m['range']})"
                lines.append(f"| {beta} | {family} ({m['setting']}){flag} | {m[distance]:.3f} | "
                             f"{m[f'idsim_{recognizer}']:.3f} | {m['face_mse']:.0f} | "
                             f"{m['face_ssim']:.3f} | {m[f'frechet_{recognizer}']:.3f} |")
        lines += ["", f"### Tables 4-5: at face SSIM 0.65 ({recognizer})", "",
                  "| method (settings) | face SSIM | distance | Id_Sim | De-Id | detection |",
                  "|---|---|---|---|---|---|"]
        for family in ("pe", "blur", "mosaic"):
            m = at_level(grouped[family], "face_ssim", 0.65, columns)
            flag = "" if m["in_range"] else f" (outside swept range {m['range']})"
            lines.append(f"| {family} ({m['setting']}){flag} | {m['face_ssim']:.3f} | "
                         f"{m[distance]:.3f} | {m[f'idsim_{recognizer}']:.3f} | "
                         f"{m[f'deid_{recognizer}']:.3f} | {m['detection']:.3f} |")
        lines.append("")
    lines += ["### Table 6: the project's other methods at their defaults, same faces", "",
              "| method | face MSE | face SSIM | Fréchet dlib | " + " | ".join(
                  f"Id_Sim {n} | De-Id {n} | rank-1 {n}" for n in RECOGNIZERS) + " | detection |",
              "|---|---|---|---|" + "---|---|---|" * len(RECOGNIZERS) + "---|"]
    table6 = [("private_encoder β=0.2", pe.get("pe_beta_0.2"))] + \
        [(label.split("_", 1)[1], m) for label, m in grouped["default"].items()]
    for name, m in table6:
        if m is None:
            continue
        cells = " | ".join(f"{m[f'idsim_{n}']:.3f} | {m[f'deid_{n}']:.3f} | {m[f'rank1_{n}']:.3f}"
                           for n in RECOGNIZERS)
        lines.append(f"| {name} | {m['face_mse']:.0f} | {m['face_ssim']:.3f} | "
                     f"{m['frechet_dlib']:.3f} | {cells} | {m['detection']:.3f} |")
    lines.append("")
    at02 = pe.get("pe_beta_0.2")
    if at02:
        attributes = ", ".join(f"{k} {v:.3f}" for k, v in at02["attributes"].items())
        lines += ["### Targets at β = 0.2", "",
                  f"De-Identify rate dlib {at02['deid_dlib']:.3f}, surrogate "
                  f"{at02['deid_surrogate']:.3f} (faceres, seen in training, "
                  f"{at02['deid_faceres']:.3f}); face SSIM {at02['face_ssim']:.3f}; detection "
                  f"rate {at02['detection']:.3f}; attribute agreement with the original: "
                  f"{attributes}.", ""]
    return "\n".join(lines)


def plot(grouped: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pe = grouped["pe"]
    betas = [float(label.rsplit("_", 1)[1]) for label in pe]
    rows = list(pe.values())
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    axes[0].plot(betas, [r["face_ssim"] for r in rows], "o-", label="face SSIM")
    axes[0].plot(betas, [r["face_mse"] / 1000 for r in rows], "s-", label="face MSE / 1000")
    axes[0].plot(betas, [r["frechet_dlib"] for r in rows], "^-", label="Fréchet (dlib emb.)")
    axes[0].set_title("Fig. 3: quality vs β")
    for name in RECOGNIZERS:
        style = "--" if name == "faceres" else "-"
        suffix = " (seen in training)" if name == "faceres" else ""
        axes[1].plot(betas, [r[f"idsim_{name}"] for r in rows], "o" + style, label=name + suffix)
        axes[2].plot(betas, [r[f"deid_{name}"] for r in rows], "o" + style, label=name + suffix)
    axes[1].set_title("Fig. 4a: Id_Similarity vs β")
    axes[2].set_title("Fig. 4b: De-Identify rate vs β")
    axes[3].plot(betas, [r["detection"] for r in rows], "o-", color="k")
    axes[3].set_ylim(0, 1.02)
    axes[3].set_title("Fig. 5: detection rate (dlib HOG)")
    for axis in axes:
        axis.set_xlabel("β")
        axis.grid(alpha=0.3)
    for axis in axes[:3]:
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def before_after_grid(path: Path, count: int = 6) -> None:
    """Fig. 6-like: originals and outputs at β = 0, 0.2, 0.4, 0.6, 1.0, whole images."""
    from PIL import Image

    from facedeid.io.datasets import first_photo_of_each_held_out_person
    from facedeid.io.images import read_image
    from facedeid.pipeline import Anonymizer

    files = first_photo_of_each_held_out_person(REPO.parent / "shared" / "data" / "celeba-id200",
                                                count)
    anonymizers = [Anonymizer("private_encoder", {"beta": beta}, allow_weak=True)
                   for beta in (0.0, 0.2, 0.4, 0.6, 1.0)]
    rows = []
    for image_path in files:
        image = read_image(image_path).rgb
        faces = anonymizers[0].detect(image)  # located once, drawn at every beta
        rows.append(np.hstack([image] + [anonymizer.anonymize(image, faces=faces).image
                                         for anonymizer in anonymizers]))
    Image.fromarray(np.vstack(rows)).save(path)


def speed() -> dict:
    """Faces per second at batch 1 and 32, Private-Encoder next to QM-VAE (the peer)."""
    import torch

    from facedeid.methods.private_encoder import DEFAULT_CHECKPOINT
    from facedeid.methods.qmvae import DEFAULT_CHECKPOINT as QMVAE_CHECKPOINT
    from facedeid.models.private_encoder import load_private_face_model
    from facedeid.models.qmvae import load_qmvae

    model, _ = load_private_face_model(DEFAULT_CHECKPOINT)
    qmvae, _ = load_qmvae(QMVAE_CHECKPOINT)
    size = model.generator.config.image_size
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (96, size, size, 3), dtype=np.uint8)
    stacks = rng.integers(0, 255, (96, size, size, 3 * len(qmvae.config.inputs)), dtype=np.uint8)
    report = {"threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    for batch in (1, 32):
        for name, run in (("private_encoder", lambda b: model.anonymize(crops, 0.2, b)),
                          ("qmvae", lambda b: qmvae.fuse(stacks, b))):
            report[f"{name}_batch{batch}_faces_per_s"] = faces_per_second(
                lambda: run(batch), len(crops))
    report["load_after"] = os.getloadavg()
    return report


def video_identity_consistency(clip: Path, work: Path, step: int = 10) -> dict:
    """Does a tracked face keep one replacement identity? dlib distances between the face in
    every ``step``-th frame and the face in the first frame, on the original and on the
    Private-Encoder output (the same boxes: the original's), plus the output-to-original
    distance. An "identity switch" is a frame whose distance to the first exceeds dlib's 0.6."""
    import av

    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.evaluation.recognizers import create_recognizer
    from facedeid.pipeline import Anonymizer
    from facedeid.video import VideoOptions, anonymize_video

    target = work / "talking_head_private_encoder.mp4"
    started = time.perf_counter()
    report = anonymize_video(clip, target, Anonymizer("private_encoder", {"beta": 0.2}),
                             VideoOptions(progress=False))
    seconds = time.perf_counter() - started

    def frames(path: Path) -> list[np.ndarray]:
        with av.open(str(path)) as container:
            return [frame.to_ndarray(format="rgb24")
                    for index, frame in enumerate(container.decode(video=0)) if index % step == 0]

    originals, outputs = frames(clip), frames(target)
    locator, dlib = FaceLocator(), create_recognizer("dlib")
    boxes, kept_originals, kept_outputs = [], [], []
    for original, output in zip(originals, outputs):
        face = main_face(locator.locate(original))
        if face is not None:
            boxes.append(face.box)
            kept_originals.append(original)
            kept_outputs.append(output)
    before = dlib.embed(kept_originals, boxes)
    after = dlib.embed(kept_outputs, boxes)
    to_first = lambda e: np.linalg.norm(e - e[0], axis=1)[1:]  # noqa: E731
    return {"clip": clip.name, "frames": report.frames, "tracks": report.tracks,
            "seconds": round(seconds, 1), "sampled_frames": len(boxes),
            "original_to_first_mean": round(float(to_first(before).mean()), 3),
            "output_to_first_mean": round(float(to_first(after).mean()), 3),
            "output_to_first_max": round(float(to_first(after).max()), 3),
            "output_identity_switches": int((to_first(after) > 0.6).sum()),
            "output_to_original_mean": round(float(np.linalg.norm(after - before, axis=1).mean()), 3)}


def landmark_residuals(limit: int = 300) -> dict:
    """How far real faces' landmarks sit from the aligned template (the fallback rule of
    :func:`facedeid.methods.private_encoder.face_problem`): percentiles on CelebA test photos
    (near-frontal) and on the frames of a head-pose clip (frontal to profile), and the share
    of each that the method would hand to the fallback."""
    from PIL import Image, ImageSequence

    from facedeid.alignment import FaceAligner
    from facedeid.detection.locate import FaceLocator
    from facedeid.io.images import read_image
    from facedeid.methods.private_encoder import MAX_LANDMARK_RESIDUAL, face_problem

    locator, aligner = FaceLocator(), FaceAligner(64)

    def residuals(images) -> list[tuple[float, bool]]:
        values = []
        for image in images:
            for face in locator.locate(image):
                crop = aligner.align(image, face)
                values.append((float(np.linalg.norm(crop.landmarks - aligner.template, axis=1)
                                     .mean()) / 64, face_problem(crop, aligner.template) is not None))
        return values

    root = REPO.parent / "shared" / "data"
    celeba = residuals(read_image(path).rgb for path in
                       sorted((root / "celeba-id200" / "img_align_celeba").glob("*.jpg"))[:limit])
    gif = Image.open(root / "video" / "head-pose-face-detection-female-and-male.gif")
    frames = [np.asarray(frame.convert("RGB")) for index, frame in
              enumerate(ImageSequence.Iterator(gif)) if index % 5 == 0]
    head_pose = residuals(frames)
    report = {"residual_threshold": MAX_LANDMARK_RESIDUAL}
    for name, pairs in (("celeba_id200", celeba), ("head_pose_gif", head_pose)):
        values = np.asarray([value for value, _ in pairs])
        report[name] = {"faces": len(values),
                        "p50": round(float(np.percentile(values, 50)), 4),
                        "p95": round(float(np.percentile(values, 95)), 4),
                        "p99": round(float(np.percentile(values, 99)), 4),
                        "max": round(float(values.max()), 4),
                        "fallback_share": round(float(np.mean([f for _, f in pairs])), 4)}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/pe_paper"))
    parser.add_argument("--limit", type=int, default=None,
                        help="first N test images (default: all 1,200)")
    parser.add_argument("--cache-dir", default="runs/evalcache")
    parser.add_argument("--skip-eval", action="store_true", help="reuse OUT/sweep/results.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs/img/private_encoder_beta.png")
    parser.add_argument("--grid", type=Path, default=REPO / "docs/img/private_encoder_grid.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "sweep" / "results.json" if args.skip_eval \
        else run_evaluation(args.out, args.limit, args.cache_dir)
    results = json.loads(results_path.read_text())
    grouped = families(results)
    text = tables(grouped)
    plot(grouped, args.plot)
    before_after_grid(args.grid)
    text += "\n### Fallback rule: landmark residual from the template\n\n" + \
        json.dumps(landmark_residuals()) + "\n"
    timing = speed()
    text += "\n### Inference speed (aligned 64-px crops, CPU)\n\n" + json.dumps(timing) + "\n"
    clip = REPO.parent / "shared" / "data" / "video" / "talking_head_608x1080.mp4"
    if clip.is_file():
        consistency = video_identity_consistency(clip, args.out)
        text += "\n### One identity per video track (dlib, every 10th frame)\n\n" + \
            json.dumps(consistency) + "\n"
    faces = results["methods"][0]["faces"]
    header = (f"{faces} test faces of the 40 identity-disjoint celeba-id200 test people "
              f"(`{results_path}`).\n\n")
    (args.out / "tables.md").write_text(header + text)
    print(header + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
