"""QM-VAE inference speed on CPU: the network alone, and the whole method on aligned crops.

* ``network``: fusing cached ``(64, 64, 12)`` input stacks (what the paper's model does);
* ``method``: ``QMVAEMethod.apply_batch`` on aligned crops -- the four input operators
  (blindfold, mosaic, Laplace, cartoon) run per face, then one batched network call.

Run::

    python benchmarks/qmvae_speed.py [--checkpoint facedeid/checkpoints/qmvae_expression.pt]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from qmvae_paper import DATA

    from facedeid.alignment import FaceAligner
    from facedeid.detection.locate import FaceLocator, main_face
    from facedeid.io.images import read_image
    from facedeid.methods import FaceContext, create_method

    method = create_method("qmvae", checkpoint=args.checkpoint, batch_size=256)
    aligner = FaceAligner(size=method.aligned_size)
    locator = FaceLocator("centerface")
    crops = []
    for path in sorted((DATA / "img_align_celeba").iterdir())[800:800 + args.faces]:
        image = read_image(path).rgb
        face = main_face(locator.locate(image))
        if face is not None:
            crops.append(aligner.align(image, face))
    contexts = [FaceContext(rng=np.random.default_rng(i)) for i in range(len(crops))]
    stacks = np.stack([method._stack(c, x) for c, x in zip(crops, contexts)])
    method.model.fuse(stacks[:8])  # warm-up
    started = time.perf_counter()
    method.model.fuse(stacks, batch_size=256)
    network = len(stacks) / (time.perf_counter() - started)
    started = time.perf_counter()
    method.apply_batch(crops, contexts)
    whole = len(crops) / (time.perf_counter() - started)
    print(f"faces={len(crops)} network={network:.1f} faces/s  method (operators+network)="
          f"{whole:.1f} faces/s  torch threads={args.threads}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
