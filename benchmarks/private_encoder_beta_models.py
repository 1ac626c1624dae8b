"""One β-conditioned Private-Encoder vs the paper's one-model-per-β, on unseen people.

The paper trains a model per β; ``private_encoder`` trains one model with β as an input. This
compares them on aligned faces of the 40 identity-disjoint test people: for every fixed-β model
(``--fixed BETA=PATH``), the identity similarity of its outputs to the inputs under faceres
(the training identity network) and under the surrogate recognizer (never used in training),
with a 95 % confidence interval over faces, next to the conditioned model at the same β.
The training logs also give the comparison at (nearly) *equal steps*: the conditioned model's
history entry logged closest to the fixed model's final step (held-out faceres cosine on the
32 faces the trainer reports on), printed from the checkpoints.

    python benchmarks/private_encoder_beta_models.py --conditioned runs/pe/private_encoder.pt \\
        --fixed 0.0=runs/pe/pe_beta0.0.pt 0.2=runs/pe/pe_beta0.2.pt 0.4=runs/pe/pe_beta0.4.pt
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def similarities(model, beta: float, faces: np.ndarray, faceres, surrogate) -> dict:
    import torch

    outputs = model.anonymize(faces, beta)
    as_tensor = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    report = {}
    with torch.no_grad():
        original = faceres(as_tensor(faces)).descriptor
        private = faceres(as_tensor(outputs)).descriptor
        report["faceres"] = (original * private).sum(1).numpy()
    report["surrogate"] = np.sum(surrogate(faces) * surrogate(outputs), axis=1)
    return {name: {"mean": round(float(v.mean()), 4),
                   "ci95": round(float(1.96 * v.std(ddof=1) / np.sqrt(len(v))), 4)}
            for name, v in report.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conditioned", type=Path, required=True)
    parser.add_argument("--fixed", nargs="+", required=True, metavar="BETA=PATH")
    parser.add_argument("--faces", type=int, default=300)
    parser.add_argument("--cache", default="runs/gen_crops")
    args = parser.parse_args()

    import torch

    from facedeid.models.faceres import load_faceres
    from facedeid.models.private_encoder import load_private_face_model
    from facedeid.models.surrogate_recognizer import load_surrogate_recognizer

    torch.set_num_threads(2)
    from facedeid.io.datasets import default_data_root, read_identities

    with np.load(glob.glob(f"{args.cache}/heldout_64px_*.npz")[0]) as data:
        held, keys = data["crops"], [str(k).split("@")[0] for k in data["keys"]]
    chosen = np.random.default_rng(0).permutation(len(held))[:args.faces]
    faces = held[chosen]
    people = read_identities(default_data_root() / "celeba-id200")
    labels = np.array([people[keys[i]] for i in chosen])
    faceres = load_faceres()
    surrogate_model = load_surrogate_recognizer()
    surrogate = surrogate_model.embed
    conditioned, conditioned_payload = load_private_face_model(args.conditioned)
    history = {entry["step"]: entry for entry in conditioned_payload["history"]}
    rows = []
    for item in args.fixed:
        beta_text, path = item.split("=", 1)
        beta = float(beta_text)
        fixed, payload = load_private_face_model(path)
        steps = payload["metrics"]["steps"]
        nearest_step = min(history, key=lambda logged: abs(logged - steps)) if history else None
        at_equal_steps = history[nearest_step] if history else None
        rows.append({"beta": beta, "fixed_model_steps": steps,
                     "conditioned_steps": conditioned_payload["metrics"]["steps"],
                     "fixed": similarities(fixed, beta, faces, faceres, surrogate),
                     "conditioned": similarities(conditioned, beta, faces, faceres, surrogate),
                     "conditioned_at_nearest_logged_step_faceres_32_faces": None if at_equal_steps is None
                     else {"step": at_equal_steps["step"],
                           "cos": at_equal_steps.get(f"cos@{beta:g}")},
                     "fixed_final_faceres_32_faces": payload["metrics"]["held_out"].get(
                         f"cos@{beta:g}")})
    with torch.no_grad():
        descriptors = faceres(torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255).descriptor
    cosines = (descriptors @ descriptors.T).numpy()
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    scale = {"faceres_cosine_same_person_mean": round(float(cosines[same & upper].mean()), 4),
             "faceres_cosine_different_people_mean": round(float(cosines[~same & upper].mean()), 4)}
    print(json.dumps({"faces": len(faces), "people": len(set(labels)), **scale, "rows": rows},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
