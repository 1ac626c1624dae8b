"""Where does each classic method stop de-identifying? The evidence behind ``Param.safe_min``.

For each setting, every face of a small CelebA sample is de-identified at its CenterFace box
(the same ``Anonymizer`` as ``facedeid anonymize``) and embedded by dlib's recognizer at that
box, landmarks located on the original. A face counts as *re-identified* when its distance to
its own original is below dlib's threshold 0.6. Size-relative settings (mosaic cells across the
face, blur sigma as a fraction of the face side) are also run on the images enlarged 4x, to
check that the limit scales with the face and not with pixels.

``--blur-speed`` instead times one 1280x720 frame with two CelebA faces (~250 px) pasted in:
the old direct Gaussian blur (kernel half the face) against the current blur and mosaic, and
how far the new blur's output is from the old one.

Usage::

    python benchmarks/weak_params.py --faces 20 --json /tmp/weak_params.json
    python benchmarks/weak_params.py --blur-speed
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facedeid.evaluation.recognizers import create_recognizer  # noqa: E402
from facedeid.io.datasets import default_data_root, load_dataset  # noqa: E402
from facedeid.methods import create_method  # noqa: E402
from facedeid.pipeline import Anonymizer  # noqa: E402

# (label, method, params as a function of the face side in pixels)
SETTINGS = (
    [("original", None, lambda side: {})]
    + [(f"mosaic {cells} cells/face", "mosaic",
        lambda side, c=cells: {"block_size": max(1, round(side / c))}) for cells in (8, 12, 16, 20, 24, 32)]
    + [(f"blur sigma {frac:g} x face", "blur", lambda side, f=frac: {"sigma": f * side})
       for frac in (0.075, 0.05, 0.04, 0.03, 0.02, 0.01)]
    + [(f"pixelate size {size}", "pixelate", lambda side, s=size: {"size": s})
       for size in (10, 12, 16, 20, 24, 32)]
    + [(f"gaussian_noise sigma {sigma}", "gaussian_noise", lambda side, s=sigma: {"sigma": s})
       for sigma in (5, 20, 50, 80, 120)]
    + [(f"laplace lam {lam:g}", "laplace", lambda side, v=lam: {"lam": v})
       for lam in (0.01, 0.05, 0.1, 0.2, 0.3, 0.4)]
    + [("dp_pix eps=1e9 b=1", "dp_pix", lambda side: {"eps": 1e9, "b": 1}),
       ("dp_pix eps=5 b=8 m=16", "dp_pix", lambda side: {"eps": 5, "b": 8})]
    + [(f"blindfold height {h:g}", "blindfold", lambda side, v=h: {"height": v}) for h in (0.6, 1.0)]
    + [("cartoon (defaults)", "cartoon", lambda side: {}),
       ("cartoon smoothing 0 levels 64", "cartoon", lambda side: {"smoothing": 0, "levels": 64}),
       ("cartoon levels 16", "cartoon", lambda side: {"levels": 16})]
    + [(f"ksame k {k}", "ksame", lambda side, v=k: {"k": v}) for k in (2, 3, 5, 10)]
)
# Methods whose strength may depend on the face's pixel size: also run on enlarged images.
SIZE_DEPENDENT = {None, "mosaic", "blur", "pixelate", "gaussian_noise", "laplace"}


def blur_speed(records, repeats: int = 30) -> None:
    frame = np.full((720, 1280, 3), 90, np.uint8)
    for index, record in enumerate(records[:2]):
        face = cv2.resize(record.load(), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        frame[150:150 + face.shape[0], 200 + 600 * index:200 + 600 * index + face.shape[1]] = face
    probe = Anonymizer("mask", detector="centerface")
    faces = probe.detect(frame)

    def old_blur(crop, context):  # the implementation before issue 12
        side = max(crop.box[2] - crop.box[0], crop.box[3] - crop.box[1])
        kernel = int(side / 2) | 1
        return cv2.GaussianBlur(crop.pixels, (kernel, kernel), 0, borderType=cv2.BORDER_REFLECT)

    old_method = create_method("blur")
    old_method.apply = old_blur
    timings, outputs = {}, {}
    for label, method in (("old blur", old_method), ("blur", create_method("blur")),
                          ("mosaic", create_method("mosaic"))):
        anonymizer = Anonymizer(method, detector=probe.detector, seed=0)
        outputs[label] = anonymizer.anonymize(frame, faces=faces).image
        started = time.perf_counter()
        for _ in range(repeats):
            anonymizer.anonymize(frame, faces=faces)
        timings[label] = (time.perf_counter() - started) / repeats * 1000
    changed = np.any(outputs["old blur"] != frame, axis=2)
    difference = np.abs(outputs["blur"].astype(int) - outputs["old blur"])[changed].mean()
    print(f"{len(faces)} faces; ms per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f"; old/new {timings['old blur'] / timings['blur']:.1f}x; new/mosaic "
          f"{timings['blur'] / timings['mosaic']:.2f}; mean |new - old| {difference:.2f} grey levels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--scales", default="1,4", help="image enlargement factors")
    parser.add_argument("--methods", default=None, help="comma-separated: only these methods")
    parser.add_argument("--json", default=None, help="write the table here too")
    parser.add_argument("--blur-speed", action="store_true", help="time blur against mosaic instead")
    args = parser.parse_args()

    dataset = load_dataset(default_data_root() / "celeba-id200", split="test")
    if args.blur_speed:
        blur_speed(list(dataset))
        return
    images = [record.load() for record in list(dataset)[:args.faces]]
    recognizer = create_recognizer("dlib")
    rows = []
    for scale in (int(s) for s in args.scales.split(",")):
        scaled = [cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
                  if scale != 1 else image for image in images]
        probe = Anonymizer("mask", detector="centerface")
        found = [(image, faces[0]) for image in scaled if (faces := probe.detect(image))]
        originals = [image for image, _ in found]
        boxes = [face.box for _, face in found]
        sides = [float(max(face.width, face.height)) for _, face in found]
        reference = recognizer.embed(originals, boxes)
        for label, name, params_for in SETTINGS:
            if scale != 1 and name not in SIZE_DEPENDENT:
                continue
            if args.methods and name is not None and name not in args.methods.split(","):
                continue
            started = time.perf_counter()
            outputs = []
            for (image, face), side in zip(found, sides):
                if name is None:
                    outputs.append(image)
                    continue
                method = create_method(name, allow_weak=True, **params_for(side))
                outputs.append(Anonymizer(method, detector=probe.detector, seed=0)
                               .anonymize(image, faces=[face]).image)
            distance = np.linalg.norm(recognizer.embed(outputs, boxes, originals) - reference, axis=1)
            rows.append({"scale": scale, "setting": label, "faces": len(found),
                         "median_face_px": float(np.median(sides)),
                         "reidentified": float(np.mean(distance < recognizer.threshold)),
                         "median_distance": float(np.median(distance)),
                         "seconds": round(time.perf_counter() - started, 1)})
            row = rows[-1]
            print(f"x{scale} face {row['median_face_px']:.0f}px  {label:28s} re-identified "
                  f"{row['reidentified']:.2f}  median distance {row['median_distance']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
