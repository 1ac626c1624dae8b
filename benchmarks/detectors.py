"""Detector recall, false positives and speed (issue 2's report).

    python benchmarks/detectors.py [--celeba-count 200] [--frames-per-clip 8] [--out runs/detectors.json]

* CelebA (celeba-id200, aligned 178x218, one subject per image): a detection is a true positive
  when its box contains both canonical eye positions of CelebA's alignment (about (70, 112) and
  (108, 112)); any other detection counts as a false positive (background faces are rare).
* Video (../shared/data/video): frames sampled evenly from each clip; the reference is dlib's CNN
  (MMOD) detector with one up-sampling, a model none of the compared detectors share. Recall is
  the fraction of reference faces matched (IoU >= 0.3); "unmatched" detections include true faces
  the reference missed (profiles, backs of heads), so they are an upper bound on false positives.
* Speed: median milliseconds per image at 178x218 and 1280x720, all detectors timed in the same
  process, plus each one's ratio to Haar (the peer) so numbers survive a busier machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facedeid.detection import create_detector  # noqa: E402

DATA = REPO.parent / "shared" / "data"
DETECTORS = ["centerface", "dlib-hog", "haar"]
CELEBA_EYES = np.array([[70, 112], [108, 112]])


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def sample_frames(path: Path, count: int) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        return []
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [frames[i] for i in sorted(set(picks))]


def celeba_scores(detectors: dict, count: int) -> dict:
    files = sorted((DATA / "celeba-id200" / "img_align_celeba").glob("*.jpg"))[:count]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    out = {}
    for name, detector in detectors.items():
        hits = false_positives = 0
        for image in images:
            matched = False
            for face in detector.detect(image):
                x0, y0, x1, y1 = face.box
                covers_eyes = all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in CELEBA_EYES)
                if covers_eyes and not matched:
                    matched = True
                else:
                    false_positives += 1
            hits += matched
        out[name] = {"images": len(images), "recall": round(hits / len(images), 3),
                     "false_positives": false_positives}
    return out


def video_scores(detectors: dict, frames_per_clip: int) -> dict:
    reference = create_detector("dlib-cnn", upsample=1, max_side=1280)
    clips = sorted(p for p in (DATA / "video").iterdir() if p.suffix in (".mp4", ".gif"))
    totals = {name: {"matched": 0, "unmatched": 0} for name in detectors}
    reference_faces = frame_count = 0
    for clip in clips:
        for frame in sample_frames(clip, frames_per_clip):
            frame_count += 1
            truth = [f.box for f in reference.detect(frame)]
            reference_faces += len(truth)
            for name, detector in detectors.items():
                found = [f.box for f in detector.detect(frame)]
                used = set()
                for box in truth:
                    best = max(range(len(found)), key=lambda i: iou(box, found[i]), default=None)
                    if best is not None and best not in used and iou(box, found[best]) >= 0.3:
                        used.add(best)
                        totals[name]["matched"] += 1
                totals[name]["unmatched"] += len(found) - len(used)
    return {name: {"frames": frame_count, "reference_faces": reference_faces,
                   "recall": round(t["matched"] / max(reference_faces, 1), 3),
                   "unmatched_detections": t["unmatched"]} for name, t in totals.items()}


def speed(detectors: dict, repeats: int = 15) -> dict:
    small = np.asarray(Image.open(sorted((DATA / "celeba-id200" / "img_align_celeba").glob("*.jpg"))[0])
                       .convert("RGB"))
    frame = sample_frames(DATA / "video" / "two_faces_640x360.mp4", 1)[0]
    hd = cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_LINEAR)
    out = {}
    for label, image in (("178x218", small), ("1280x720", hd)):
        for name, detector in detectors.items():
            detector.detect(image)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                detector.detect(image)
                times.append((time.perf_counter() - start) * 1000)
            out.setdefault(name, {})[f"ms_{label}"] = round(statistics.median(times), 1)
    for name in out:
        for label in ("178x218", "1280x720"):
            out[name][f"vs_haar_{label}"] = round(out[name][f"ms_{label}"] / out["haar"][f"ms_{label}"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--celeba-count", type=int, default=200)
    parser.add_argument("--frames-per-clip", type=int, default=8)
    parser.add_argument("--out", default="runs/detectors.json")
    parser.add_argument("--speed-only", action="store_true", help="only the timing table")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"needs the shared datasets at {DATA}")
    detectors = {name: create_detector(name) for name in DETECTORS}
    if args.speed_only:
        print("| detector | ms 178x218 | ms 1280x720 | ratio to Haar, 178x218 | ratio to Haar, 1280x720 |")
        print("|---|---|---|---|---|")
        for name, s in speed(detectors).items():
            print(f"| {name} | {s['ms_178x218']} | {s['ms_1280x720']} | {s['vs_haar_178x218']} | "
                  f"{s['vs_haar_1280x720']} |")
        return
    results = {"celeba_id200": celeba_scores(detectors, args.celeba_count),
               "video_frames": video_scores(detectors, args.frames_per_clip),
               "speed": speed(detectors)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print("| detector | CelebA recall | CelebA FP | video recall vs dlib-CNN | video unmatched | "
          "ms 178x218 | ms 1280x720 |")
    print("|---|---|---|---|---|---|---|")
    for name in DETECTORS:
        c, v, s = results["celeba_id200"][name], results["video_frames"][name], results["speed"][name]
        print(f"| {name} | {c['recall']:.3f} ({c['images']}) | {c['false_positives']} | {v['recall']:.3f} "
              f"({v['reference_faces']} faces, {v['frames']} frames) | {v['unmatched_detections']} | "
              f"{s['ms_178x218']} | {s['ms_1280x720']} |")


if __name__ == "__main__":
    main()
