"""Why the face generator works at 64 px: the training faces' native size and the step cost.

Two measurements behind the choice in ``facedeid/models/face_generator.py``:

1. **Native resolution.** For the first N images of each training source, the inter-ocular
   distance (CenterFace + dlib landmarks, the pipeline's locator) in source pixels next to the
   distance the aligned crop gives the eyes at 64 and 128 px (FaceAligner's template). A ratio
   above 1 means the crop *upsamples* the photo: the generator would learn interpolation blur.
2. **Training step time** of the same architecture at 64 px and at 128 px (one more block),
   batch 32, encoder + generator + PatchGAN critic forward and backward, median of 5 steps, in
   the same run.

    python benchmarks/generator_resolution.py --images 200
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


def native_eye_distance(count: int) -> dict:
    from facedeid.alignment import FaceAligner
    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.io.datasets import default_data_root
    from facedeid.io.images import read_image

    locator = FaceLocator()
    report = {}
    for size in (64, 128):
        template = FaceAligner(size).template
        report[f"crop_eye_distance_{size}px"] = round(float(np.linalg.norm(template[0] - template[1])), 1)
    for source in ("celeba-first10k", "celeba-id200"):
        distances = []
        for path in sorted((default_data_root() / source / "img_align_celeba").glob("*.jpg"))[:count]:
            face = main_face(locator.locate(read_image(path).rgb))
            if face is not None and face.landmarks is not None:
                distances.append(float(np.linalg.norm(face.landmarks[0] - face.landmarks[1])))
        median = float(np.median(distances))
        report[source] = {"faces": len(distances), "median_eye_distance_px": round(median, 1)}
        for size in (64, 128):
            report[source][f"upsampling_at_{size}px"] = round(
                report[f"crop_eye_distance_{size}px"] / median, 2)
    return report


def step_seconds(size: int, repeats: int = 5) -> float:
    import torch

    from facedeid.models.face_generator import (FaceEncoder, FaceGenerator, GeneratorConfig,
                                                PatchDiscriminator)

    widths = (256, 128, 64, 32) if size == 64 else (256, 128, 64, 32, 24)
    config = GeneratorConfig(image_size=size, widths=widths)
    encoder, generator, critic = FaceEncoder(config), FaceGenerator(config), PatchDiscriminator(size)
    faces = torch.rand(32, 3, size, size)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        rebuilt = generator(encoder(faces))
        loss = (rebuilt - faces).abs().mean() + critic(rebuilt).mean() + critic(faces).mean()
        loss.backward()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    report = {"load_before": os.getloadavg(), **native_eye_distance(args.images)}
    report["step_seconds_64px"] = round(step_seconds(64), 3)
    report["step_seconds_128px"] = round(step_seconds(128), 3)
    report["step_cost_128_over_64"] = round(report["step_seconds_128px"] /
                                            report["step_seconds_64px"], 2)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
