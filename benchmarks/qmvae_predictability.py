"""How well can the service's decision on the *original* be guessed from QM-VAE's inputs alone?

QM-VAE (Qiu et al. 2022, seed 000) never sees the original face, so a fused face can only keep
the expression service's decision (Eq. 8) as far as that decision can be inferred from the
de-identified inputs. Generator + service, taken together, are one such guess. This benchmark
trains a plain CNN classifier for the same guess, on the same training faces and the same
targets (the black box's answers on the originals' Haar windows, which QM-VAE training queries
too), and reports its disagreement rate on the paper's 200 test faces (files 000801-001000). It
is not a bound -- a generator can pass pixels through instead of a decision -- but it tells how
much of a QM-VAE's loss rate comes from the training set being too small to learn the decision.

Run (800 faces = the paper's split; 10000 = every other file of celeba-first10k)::

    python benchmarks/qmvae_predictability.py --limit 1000 --epochs 30
    python benchmarks/qmvae_predictability.py --limit 10000 --epochs 12
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def classifier(in_channels: int, width: int, classes: int):
    """Four conv stages (two 3x3 convs each, batch norm, max-pool), dropout, linear head."""
    from torch import nn

    layers: list = []
    channels = in_channels
    for out in (width, 2 * width, 4 * width, 4 * width):
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                   nn.ReLU(), nn.Conv2d(out, out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(channels, classes))


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from facedeid.training.blackbox import ExpressionBlackBox, checked_probabilities
    from facedeid.training.qmvae import TrainConfig, original_service_inputs
    from qmvae_paper import DEFAULT_INPUTS, prepare

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=1000,
                        help="first N CelebA files (test files 801-1000 are always held out)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the per-epoch record here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train, test = prepare(DEFAULT_INPUTS, limit=args.limit)
    service = ExpressionBlackBox()
    config = TrainConfig()  # service_view "pasted": the originals' Haar windows, as in training
    train_targets = torch.from_numpy(checked_probabilities(
        service, original_service_inputs(train, config)).astype(np.float32))
    test_labels = checked_probabilities(service, original_service_inputs(test, config)).argmax(1)

    def inputs(data) -> torch.Tensor:
        return torch.from_numpy(data.stacks()).permute(0, 3, 1, 2).float() / 255.0

    train_x, test_x = inputs(train), inputs(test)
    network = classifier(train_x.shape[1], args.width, train_targets.shape[1])
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-2)
    batch = 64
    steps = args.epochs * (len(train_x) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    record, started = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        network.train()
        order = torch.randperm(len(train_x))
        for first in range(0, len(train_x) - batch + 1, batch):
            chosen = order[first:first + batch]
            faces = train_x[chosen]
            flip = torch.rand(len(chosen)) < 0.5  # the service's decision is mirror-symmetric
            faces[flip] = faces[flip].flip(-1)
            loss = -(train_targets[chosen] * F.log_softmax(network(faces), 1)).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        network.eval()
        with torch.no_grad():
            guess = network(test_x).argmax(1).numpy()
        disagreement = float((guess != test_labels).mean())
        record.append({"epoch": epoch, "test_disagreement": disagreement,
                       "seconds": round(time.perf_counter() - started, 1)})
        print(f"epoch {epoch}: test disagreement {disagreement:.3f}", flush=True)
    result = {"train_faces": len(train), "test_faces": len(test), "epochs": args.epochs,
              "final_test_disagreement": record[-1]["test_disagreement"], "history": record}
    print(json.dumps({key: value for key, value in result.items() if key != "history"}))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.exit(main())
