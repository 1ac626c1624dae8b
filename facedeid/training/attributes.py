"""Train the multi-task attribute classifier used by the attribute-utility service.

EEAE (Liu et al., IEEE IoT-J, seed 004) measures what a de-identification keeps with a
multi-task "feature selection network" (one classifier, several binary facial attributes);
:class:`facedeid.models.attribute_net.AttributeNet` plays that role and this script trains it
from scratch on CelebA (official ``list_attr_celeba.txt`` labels).

Data and the held-out set (identities never seen in training):

* The held-out people are the 40 *test* people of ``celeba-id200``'s identity-disjoint split
  (``identity_split_disjoint.txt``): the privacy and utility figures are measured on them, so
  the attribute service must never have seen them. All 1,200 of their photos are held out.
* The other 160 ``celeba-id200`` people train on their ``identity_split.txt`` *train* photos
  (24 each); their 6 *test* photos each measure accuracy on seen people, unseen photos.
* ``celeba-first10k`` (89x109 half-resolution) is used for training, minus every image whose
  identity appears anywhere in ``celeba-id200`` (this also drops the 60 first10k photos of the
  40 held-out people).
* A face box comes from :class:`facedeid.detection.locate.FaceLocator` (CenterFace, second
  chance included) and :func:`~facedeid.detection.locate.main_face` on each image (images
  where it finds none are skipped and counted); crops are :func:`facedeid.models.attribute_net.attribute_crop` with a 4-pixel
  margin so training can random-shift them. Crops are cached in ``--cache`` (an .npz).

Command that produced ``facedeid/checkpoints/attributes_celeba.pt``::

    python -m facedeid.training.attributes --out facedeid/checkpoints/attributes_celeba.pt \\
        --epochs 12 --threads 1 --seed 0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..models.attribute_net import CROP_SIZE, DEFAULT_ATTRIBUTES, AttributeNet, attribute_crop
from ..models.tensors import crops_to_tensor

CHECKPOINT_FORMAT = "facedeid-attributes-v1"
MARGIN = 4
# Stored with cached crops: crops cut where another rule chose the face are not reused.
LOCATE_RULE = "locator+main_face"


def _celeba(data_root: Path, name: str):
    from ..io.datasets import load_celeba
    return load_celeba(data_root / name, split=None, split_source="auto", name=name)


def select_records(data_root: Path):
    """``(train records, held-out records, summary dict)`` as described in the module docstring."""
    from ..io.datasets import held_out_identities

    first10k = _celeba(data_root, "celeba-first10k")
    id200 = _celeba(data_root, "celeba-id200")
    id200_people = {r.identity for r in id200}
    test_people = held_out_identities(data_root / "celeba-id200")
    train = [r for r in first10k if r.identity not in id200_people]
    train += [r for r in id200 if str(r.identity) not in test_people and r.split == "train"]
    held_out = [r for r in id200 if str(r.identity) in test_people]
    seen_test = [r for r in id200 if str(r.identity) not in test_people and r.split == "test"]
    summary = {
        "first10k_used": sum(1 for r in first10k if r.identity not in id200_people),
        "first10k_excluded_id200_people": sum(1 for r in first10k if r.identity in id200_people),
        "id200_train_used": len(train) - sum(1 for r in first10k if r.identity not in id200_people),
        "held_out": len(held_out),
        "held_out_people": len({r.identity for r in held_out}),
    }
    assert not {r.identity for r in train} & {r.identity for r in held_out}
    return train, held_out, seen_test, summary


def build_crops(records, attributes, locator, desc: str):
    """``(N, 72, 72, 3) uint8`` margin crops, ``(N, K) bool`` labels; images without a face skipped.

    ``locator``: a :class:`~facedeid.detection.locate.FaceLocator`, built once per run.
    """
    from tqdm import tqdm

    from ..detection.locate import main_face

    crops, labels, skipped = [], [], 0
    for record in tqdm(records, desc=desc, unit="img", mininterval=5):
        image = record.load()
        face = main_face(locator.locate(image))
        if face is None:
            skipped += 1
            continue
        crops.append(attribute_crop(image, face.box, CROP_SIZE, MARGIN))
        labels.append([record.labels["attributes"][name] for name in attributes])
    return np.stack(crops), np.asarray(labels, dtype=bool), skipped


def cached_crops(cache: Path, records, attributes, locator, desc: str):
    names = [r.path.name + "@" + r.path.parent.parent.name for r in records]
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if list(data["names"]) == names and list(data["attributes"]) == list(attributes) \
                    and "locate_rule" in data and str(data["locate_rule"]) == LOCATE_RULE:
                return data["crops"], data["labels"], int(data["skipped"])
    crops, labels, skipped = build_crops(records, attributes, locator, desc)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, crops=crops, labels=labels, skipped=skipped, names=np.asarray(names),
             attributes=np.asarray(list(attributes)), locate_rule=LOCATE_RULE)
    return crops, labels, skipped


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random shift (inside the margin), horizontal flip, brightness/contrast jitter."""
    n = len(batch)
    out = np.empty((n, CROP_SIZE, CROP_SIZE, 3), dtype=np.float32)
    shifts = rng.integers(0, 2 * MARGIN + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    for i in range(n):
        dy, dx = shifts[i]
        crop = batch[i, dy:dy + CROP_SIZE, dx:dx + CROP_SIZE]
        out[i] = crop[:, ::-1] if flips[i] else crop
    gain = rng.uniform(0.75, 1.25, size=(n, 1, 1, 1))
    bias = rng.uniform(-25, 25, size=(n, 1, 1, 1))
    return np.clip(out * gain + bias, 0, 255).astype(np.uint8)


def _center(batch: np.ndarray) -> np.ndarray:
    return batch[:, MARGIN:MARGIN + CROP_SIZE, MARGIN:MARGIN + CROP_SIZE]


def predict_logits(model, crops: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import torch
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            outputs.append(model(crops_to_tensor(crops[start:start + batch_size])).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, len(model.attributes)))


def accuracy_table(model, crops: np.ndarray, labels: np.ndarray, train_labels: np.ndarray,
                   attributes) -> dict:
    """Per attribute: accuracy, and the majority-class baseline (majority taken on training)."""
    predicted = predict_logits(model, _center(crops)) > 0
    table = {}
    for k, name in enumerate(attributes):
        majority = bool(train_labels[:, k].mean() >= 0.5)
        table[name] = {"accuracy": round(float((predicted[:, k] == labels[:, k]).mean()), 4),
                       "majority_baseline": round(float((labels[:, k] == majority).mean()), 4),
                       "positive_rate": round(float(labels[:, k].mean()), 4)}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the CelebA multi-task attribute classifier.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint .pt to write")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding celeba-first10k/ and celeba-id200/ (default ../shared/data)")
    parser.add_argument("--attributes", nargs="+", default=list(DEFAULT_ATTRIBUTES))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared, busy CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/attribute_crops"),
                        help="folder for the cached aligned crops (.npz)")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from ..detection.locate import FaceLocator
    from ..io.datasets import default_data_root

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data_root = args.data_root or default_data_root()
    train_records, held_records, seen_records, summary = select_records(data_root)
    print(json.dumps(summary))
    # Attribute crops come from the box alone: landmarks are estimated, no dlib model loads.
    locator = FaceLocator("centerface", {"threads": args.threads}, landmarks="box")
    tag = "_".join(args.attributes)
    train_x, train_y, train_skipped = cached_crops(args.cache / f"train_{tag}.npz", train_records,
                                                   args.attributes, locator, "train crops")
    held_x, held_y, held_skipped = cached_crops(args.cache / f"heldout_{tag}.npz", held_records,
                                                args.attributes, locator, "held-out crops")
    seen_x, seen_y, _ = cached_crops(args.cache / f"seen_{tag}.npz", seen_records,
                                     args.attributes, locator, "seen-people crops")
    print(f"train {len(train_x)} crops ({train_skipped} without a CenterFace face), held-out "
          f"{len(held_x)} ({held_skipped} without a face)")

    model = AttributeNet(args.attributes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = int(np.ceil(len(train_x) / args.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                   total_steps=args.epochs * steps_per_epoch)
    targets = torch.from_numpy(train_y.astype(np.float32))
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(train_x))
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            index = order[start:start + args.batch_size]
            inputs = crops_to_tensor(_augment(train_x[index], rng))
            loss = F.binary_cross_entropy_with_logits(model(inputs), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        held = accuracy_table(model, held_x, held_y, train_y, args.attributes)
        mean_held = np.mean([v["accuracy"] for v in held.values()])
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total / len(order):.4f}  held-out mean "
              f"accuracy {mean_held:.4f}  ({time.perf_counter() - started:.0f} s)", flush=True)

    held = accuracy_table(model, held_x, held_y, train_y, args.attributes)
    seen = accuracy_table(model, seen_x, seen_y, train_y, args.attributes)
    metrics = {"held_out_unseen_people": held, "test_split_seen_people": seen, "data": summary,
               "train_crops": int(len(train_x)), "train_skipped_no_face": int(train_skipped),
               "held_out_crops": int(len(held_x)), "held_out_skipped_no_face": int(held_skipped)}
    print(json.dumps(metrics, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "attributes": list(args.attributes),
                "crop_size": CROP_SIZE, "widths": [m[0].out_channels for m in model.trunk[::2]],
                "state_dict": state, "metrics": metrics,
                "command": "python -m facedeid.training.attributes " + " ".join(
                    sys.argv[1:] if argv is None else argv)}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
