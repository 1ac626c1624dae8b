"""Utility kept by the classic operators, as the three service evaluators see it.

For each method, the faces of ``celeba-id200`` test-split images are found once by CenterFace on
the original, anonymized by :class:`facedeid.pipeline.Anonymizer` at those boxes, and each
service (expression, attributes, detection by dlib HOG) compares its answers on the original and
the anonymized image at the same known box. QM-VAE Table 2 reports the expression loss rate of
blindfold / cartoon / Laplace / mosaic on the first 1,000 CelebA images; this is the same
measure on a different CelebA subset, with the attribute and detection services next to it.

Run::

    python benchmarks/services_classic.py --limit 200 [--methods blindfold mosaic laplace blur]
"""
from __future__ import annotations

import argparse
import json
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="test-split images to use")
    parser.add_argument("--methods", nargs="+",
                        default=["blindfold", "mosaic", "laplace", "blur", "cartoon"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.evaluation.services import create_service
    from facedeid.io.datasets import load_dataset
    from facedeid.pipeline import Anonymizer

    torch.set_num_threads(args.threads)
    dataset = load_dataset("celeba-id200", split="test", limit=args.limit)
    locator = FaceLocator("centerface")
    images, faces = [], []
    for record in tqdm(dataset, desc="detect", mininterval=5):
        image = record.load()
        face = main_face(locator.locate(image))
        if face is not None:
            images.append(image)
            faces.append(face)
    boxes = [face.box for face in faces]
    print(f"{len(images)} of {len(dataset)} images with a CenterFace face")
    services = {name: create_service(name, **({"crop": "haar"} if name == "expression" else {}))
                for name in ("expression", "attributes", "detection")}
    originals = {name: service.predict(images, boxes) for name, service in services.items()}
    results = {}
    for method in args.methods:
        started = time.perf_counter()
        anonymizer = Anonymizer(method, detector=locator, seed=0)
        anonymized = [anonymizer.anonymize(image, [face]).image for image, face in zip(images, faces)]
        results[method] = {name: service.compare(originals[name], service.predict(anonymized, boxes))
                           for name, service in services.items()}
        results[method]["seconds"] = round(time.perf_counter() - started, 1)
        print(method, json.dumps(results[method]), flush=True)

    print("\n| method | expression loss rate (Eq. 8) | Haar found on anonymized | "
          "attribute agreement (mean) | detection rate (dlib HOG) |")
    print("|---|---|---|---|---|")
    for method, result in results.items():
        expression, attributes, detection = (result["expression"], result["attributes"],
                                             result["detection"])
        print(f"| {method} | {expression['service_loss_rate']:.3f} | "
              f"{expression['found_rate_anonymized']:.3f} | "
              f"{attributes['mean_attribute_accuracy']:.3f} | {detection['detection_rate']:.3f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
