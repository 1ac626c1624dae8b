"""Make ``tests/data/faceres_reference.npz``: 10 inputs and the tfjs runtime's faceres outputs.

The reference is the real TensorFlow.js runtime (pure-JS CPU backend) running the installed
``faceres.json``; ``tests/test_faceres.py`` checks that facedeid's PyTorch reader of the same
graph agrees to 1e-4 on every input. Inputs are 224x224 uint8 crops made from images that ship
with scikit-image (public domain): the astronaut's face at several crops, a flip, a brightened
copy, the cameraman's face, a cat, a cup of coffee, seeded noise and a white image — faces for
realistic activations, the rest for saturated and unusual ones.

    python benchmarks/faceres_reference.py [--tfjs-dir /tmp/facedeid-tfjs]

tfjs is installed (``npm install``) into ``--tfjs-dir`` when it is not there yet: a scratch
folder outside the repository, used by this script only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from facedeid.assets import asset_path
from facedeid.models.faceres import crop_faces

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "tests" / "data" / "faceres_reference.npz"
TFJS_PACKAGES = ["@tensorflow/tfjs-core@4.22.0", "@tensorflow/tfjs-backend-cpu@4.22.0",
                 "@tensorflow/tfjs-converter@4.22.0"]
ASTRONAUT_FACE = (181.5, 58.2, 269.9, 177.8)   # CenterFace's box on skimage's astronaut
CAMERAMAN_FACE = (202.3, 118.9, 257.6, 196.9)  # and on the cameraman


def make_inputs() -> np.ndarray:
    """``(10, 224, 224, 3)`` uint8 RGB crops (deterministic)."""
    from skimage import data

    astronaut = data.astronaut()
    cameraman = np.repeat(data.camera()[..., None], 3, axis=2)
    brightened = np.clip(astronaut.astype(np.float32) * 1.6, 0, 255).astype(np.uint8)
    crops = [
        crop_faces([astronaut], [ASTRONAUT_FACE])[0],
        crop_faces([astronaut], [ASTRONAUT_FACE], margin=0.0)[0],
        crop_faces([astronaut], [ASTRONAUT_FACE], margin=0.4)[0],
        crop_faces([astronaut[:, ::-1]], [(512 - ASTRONAUT_FACE[2], ASTRONAUT_FACE[1],
                                           512 - ASTRONAUT_FACE[0], ASTRONAUT_FACE[3])])[0],
        crop_faces([brightened], [ASTRONAUT_FACE])[0],
        crop_faces([cameraman], [CAMERAMAN_FACE])[0],
        crop_faces([data.chelsea()], [(100, 20, 320, 240)])[0],
        crop_faces([data.coffee()], [(0, 0, 600, 400)], margin=0.0)[0],
        np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8),
        np.full((224, 224, 3), 255, np.uint8),
    ]
    return np.stack(crops)


def ensure_tfjs(folder: Path) -> None:
    if all((folder / "node_modules" / p.rsplit("@", 1)[0]).is_dir() for p in TFJS_PACKAGES):
        return
    folder.mkdir(parents=True, exist_ok=True)
    print(f"installing {' '.join(TFJS_PACKAGES)} into {folder}")
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder),
                    *TFJS_PACKAGES], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tfjs-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "facedeid-tfjs")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()
    ensure_tfjs(args.tfjs_dir)
    inputs = make_inputs()
    with tempfile.TemporaryDirectory() as scratch:
        raw, result = Path(scratch) / "inputs.u8", Path(scratch) / "outputs.json"
        raw.write_bytes(inputs.tobytes())
        subprocess.run(["node", str(REPO / "benchmarks" / "faceres_reference.mjs"),
                        str(args.tfjs_dir), str(asset_path("faceres_graph")), str(raw),
                        str(len(inputs)), str(result)], check=True)
        outputs = json.loads(result.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(args.out.stem + ".partial.npz")
    np.savez_compressed(
        temporary, inputs=inputs,
        descriptor=np.asarray(outputs["descriptor"], np.float32),
        male_probability=np.asarray(outputs["male_probability"], np.float32),
        age_softmax=np.asarray(outputs["age_softmax"], np.float32),
        tfjs_version=np.asarray(outputs["tfjs_version"]), backend=np.asarray(outputs["backend"]))
    temporary.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
