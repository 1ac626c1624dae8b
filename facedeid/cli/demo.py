"""``facedeid demo``: de-identify a real photo that ships with scikit-image."""
from __future__ import annotations

import argparse
from pathlib import Path

DEMO_METHODS = [("mosaic", {}), ("blindfold", {}), ("laplace", {}), ("cartoon", {}), ("blur", {}),
                ("pixelate", {})]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="de-identify a sample photo and show where the results are",
        description="Runs detect -> align -> de-identify -> paste back on scikit-image's "
                    "astronaut photo (Eileen Collins, public domain) with several methods.")
    parser.add_argument("-o", "--output", default="demo_output", help="folder for the results")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from skimage import data

    from ..detection import create_detector
    from ..io.images import write_image_atomic
    from ..pipeline import Anonymizer

    output = Path(args.output)
    image = data.astronaut()
    detector = create_detector("centerface")
    write_image_atomic(output / "original.png", Image.fromarray(image))
    tiles = [image]
    faces = None
    for name, params in DEMO_METHODS:
        anonymizer = Anonymizer(name, params, detector=detector, seed=0)
        result = anonymizer.anonymize(image, faces=faces)
        faces = result.faces
        path = write_image_atomic(output / f"astronaut_{name}.png", Image.fromarray(result.image))
        print(f"{name:10s} {len(result.faces)} face(s) -> {path}")
        tiles.append(result.image)
    box = faces[0].box.astype(int) if faces else np.array([0, 0, *image.shape[1::-1]])
    pad = 40
    x0, y0 = max(box[0] - pad, 0), max(box[1] - pad, 0)
    x1, y1 = box[2] + pad, box[3] + pad
    strip = np.concatenate([tile[y0:y1, x0:x1] for tile in tiles], axis=1)
    sheet = write_image_atomic(output / "comparison.png", Image.fromarray(strip))
    print(f"\ncomparison strip (original, then {', '.join(n for n, _ in DEMO_METHODS)}): {sheet}")
    return 0
