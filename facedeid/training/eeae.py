"""Train Enhanced Embedded AutoEncoders (seed 004, Procedures 1-3) for one attribute set.

One command runs the paper's procedures in order, skipping what is already there:

1. **External autoencoder** (Procedure 3, step 5; Eq. 6 pixel MSE) — shared by every attribute
   set, so it is trained only when ``--external`` does not exist yet, then written there.
2. **FSN** (Procedure 1; Eq. 4 cross-entropy per attribute) on the training crops' CelebA labels.
3. **PRN** (Procedure 3, step 7; Eq. 7): only the internal autoencoder learns,
   ``L_i(d, y) + α1 Σ L_f(t, FSN(x̂)) + α2 cos(PEN(x), PEN(x̂))`` with the external autoencoder,
   the FSN and the PEN frozen (evaluation mode). ``L_i`` is the mean squared error between the
   internal output ``y`` and the FSN's shared feature map ``d`` of the original.
4. **SPRN** ablation (Eq. 8, optional, ``--sprn-minutes``): one plain autoencoder — the external
   architecture, started from the pre-trained external weights — trained whole with
   ``L_e(x, x̂) + α1 Σ L_f + α2 L_p``.

PEN (Procedure 2): the paper trains ArcFace on CASIA-WebFace, which is not available here; the
strongest recognizer the project has that is not an attacker of the reported figures is faceres
(VGGFace2-trained, :mod:`facedeid.models.faceres`), so it is the PEN and every faceres privacy
figure of EEAE is marked "seen in training". It runs at ``--pen-size`` px (160 by default: at
224 px a batch of 32 took 3.3 s forward+backward on this CPU, at 160 px 1.2 s, and its
descriptors keep a mean cosine of 0.83 to the 224-px ones; at 112 px only 0.36). The originals'
PEN descriptors are computed once and cached.

Data (the paper's CelebA setting, Table I): ``celeba-first10k`` files 000001-008000 train and
008001-010000 test, both without any ``celeba-id200`` person (so the 40 identity-disjoint test
people never appear), as 64-px aligned crops cut by the pipeline's own locator and aligner
(:mod:`facedeid.training.face_crops`, cache shared with the generator). The test crops are used
only to report accuracy and rank-1 during training (Fig. 9), never in a gradient step.

Optimiser: Adam (the paper: SGD at 1e-3) — with a few minutes of CPU per stage, SGD did not get
anywhere useful; learning rate 1e-3 as the paper's.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from .runs import add_state_and_data_arguments, recorded_command, report_written, script_main

DESCRIPTION = """\
Train EEAE (seed 004) for one attribute set: the external autoencoder (Eq. 6; only when
--external does not exist yet, it is shared by all sets), the FSN multi-task attribute network
(Eq. 4), the PRN's internal autoencoder with the multiple loss of Eq. 7 (attribute feature
map + attribute cross-entropy on the output + PEN identity cosine), and optionally the SPRN
ablation (Eq. 8). The PEN is faceres, used in training only.

attribute sets: g (Male), s (Smiling), b (Big_Nose), y (Young), e (Eyeglasses), combined as in
the paper: g, s, b, y, gs, gsb, gsbe.

examples:
  facedeid train eeae --attributes gsb --external facedeid/checkpoints/eeae/external.pt \\
      --out facedeid/checkpoints/eeae/gsb.pt --sprn-minutes 3
  facedeid train eeae --attributes g --external ext.pt --out g.pt --alpha2 2 --resume
"""

WORK_FORMAT = "facedeid.eeae_training/1"
TRAIN_LAST, TEST_FIRST, TEST_LAST = 8000, 8001, 10000
#: test crops scored during training for Fig. 9 (accuracy and rank-1 over training)
MONITOR_FACES = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attributes", required=True,
                        help="attribute set: letters of g, s, b, y, e (e.g. gsb)")
    parser.add_argument("--out", type=Path, required=True,
                        help="checkpoint of this set (FSN, internal autoencoder, SPRN), fp16")
    parser.add_argument("--external", type=Path, required=True,
                        help="external autoencoder checkpoint: read when it exists, else "
                             "trained first and written here")
    add_state_and_data_arguments(parser)
    parser.add_argument("--external-minutes", type=float, default=6.0)
    parser.add_argument("--fsn-minutes", type=float, default=1.5)
    parser.add_argument("--prn-minutes", type=float, default=4.0)
    parser.add_argument("--sprn-minutes", type=float, default=0.0,
                        help="train the SPRN ablation for this long (0 = skip)")
    parser.add_argument("--fsn-from", type=Path, default=None,
                        help="take the FSN from this checkpoint of the same attribute set instead "
                             "of training one (loss-weight sweeps compare PRNs on one FSN)")
    parser.add_argument("--max-steps", type=int, default=100_000, help="per stage")
    parser.add_argument("--alpha1", type=float, default=1.0, help="attribute weight, Eq. 7/8")
    parser.add_argument("--alpha2", type=float, default=1.0, help="PEN cosine weight, Eq. 7/8")
    parser.add_argument("--pen-size", type=int, default=160,
                        help="side the PEN (faceres) sees in training, px (default 160)")
    parser.add_argument("--batch-size", type=int, default=16, help="PRN / SPRN batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def split_crops(crops: np.ndarray, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the paper-protocol train (first10k <= 008000) and test (008001-010000) crops."""
    train, test = [], []
    for index, key in enumerate(keys):
        name, _, subset = key.partition("@")
        if subset != "celeba-first10k":
            continue
        number = int(Path(name).stem)
        (train if number <= TRAIN_LAST else test).append(index)
    return np.asarray(train, int), np.asarray(test, int)


def paper_crops(data_root: Path, cache: Path, size: int, threads: int = 1,
                limit: int | None = None):
    """``(crops, keys, labels table)`` of the celeba-first10k training-pool crops.

    Without ``limit`` the crops are the face generator's cached set (same records, same cache
    file). With it only the first ``limit`` train and ``limit // 4`` test records are cut, into
    a small cache of their own (quick trials and tests).
    """
    from ..io.datasets import read_celeba_attributes
    from .attributes import select_records
    from .face_crops import cached_aligned_crops, record_key

    records, _, _, _ = select_records(Path(data_root))
    tag = "train"
    if limit is not None:
        pool = [r for r in records if record_key(r).endswith("@celeba-first10k")]
        records = [r for r in pool if int(r.path.stem) <= TRAIN_LAST][:limit] + \
            [r for r in pool if int(r.path.stem) > TRAIN_LAST][:max(limit // 4, 8)]
        tag = "eeae_limited"
    crops, keys, _ = cached_aligned_crops(cache, tag, records, size, threads)
    _, table = read_celeba_attributes(Path(data_root) / "celeba-first10k" / "list_attr_celeba.txt")
    return crops, keys, table


def labels_for(keys: list[str], indices: np.ndarray, table: dict, attributes: list[str]) -> np.ndarray:
    """``(N, m) int64`` 0/1 labels of the crops ``indices``."""
    return np.asarray([[int(table[keys[i].partition("@")[0]][a]) for a in attributes]
                       for i in indices], dtype=np.int64)


def PEN(size: int):
    """faceres at ``size`` px as Eq. 5's identity embedding (frozen, differentiable)."""
    from ..models.faceres import ResizedFaceres
    return ResizedFaceres(size)


def monitor(model, trainable, fsn, pen: PEN, faces, labels, descriptors) -> dict:
    """Fig. 9's two curves on fixed test crops: the FSN's accuracy on the de-identified faces
    and the PEN's rank-1 (de-identified probes against the originals' gallery).

    Only ``trainable`` is switched to evaluation mode and back: the frozen parts of ``model``
    stay in evaluation mode throughout (their BatchNorm statistics must not move).
    """
    import torch

    from ..evaluation.privacy import rank1_identification_rate
    with torch.no_grad():
        was_training = trainable.training
        trainable.eval()
        private = model(faces)
        trainable.train(was_training)
        accuracy = float((fsn.predict(private) == labels.bool()).float().mean())
        probe = pen(private).numpy()
    ids = np.arange(len(faces))
    rank1 = rank1_identification_rate(probe, ids, descriptors, ids, metric="cosine")
    return {"test_accuracy": round(accuracy, 4), "test_pen_rank1": round(float(rank1), 4)}


def train(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from ..errors import InvalidParameterError
    from ..io.datasets import default_data_root
    from ..models.checkpoint_files import read_payload, save_payload
    from ..models.eeae import (EEAEConfig, ExternalAutoEncoder, FeatureSelectionNetwork,
                               InternalAutoEncoder, PrivacyRemovalNetwork, attribute_names,
                               load_eeae, load_external, save_eeae, save_external)
    from ..models.tensors import crops_to_tensor
    from .generator import flip_half

    code = args.attributes.strip().lower()
    attributes = attribute_names(code)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    # the shapes are the shared external autoencoder's when it exists
    config = load_external(args.external)[0].config if args.external.is_file() else EEAEConfig()
    data_root = args.data_root or default_data_root()
    crops, keys, table = paper_crops(data_root, args.cache, config.image_size, args.threads,
                                     args.limit)
    train_idx, test_idx = split_crops(crops, keys)
    train_crops, test_crops = crops[train_idx], crops[test_idx]
    train_labels = torch.from_numpy(labels_for(keys, train_idx, table, attributes))
    summary = {"train_crops": len(train_idx), "test_crops": len(test_idx),
               "attributes": attributes, "positives": train_labels.sum(0).tolist()}
    print(json.dumps(summary), flush=True)
    work = args.work or args.out.with_suffix(".work.pt")
    state = {"format": WORK_FORMAT, "done": [], "models": {}, "optimizers": {}, "steps": {},
             "seconds": {}, "history": {}}
    if args.resume:
        state = read_payload(work, WORK_FORMAT, "EEAE training state", "start without --resume")

    def run_stage(name, module, trainable, loss_fn, minutes, log_fn=None):
        """Train ``trainable`` with ``loss_fn(step) -> (loss, parts)`` for ``minutes``,
        resumable from the work file (checkpointed at every log)."""
        module.load_state_dict(state["models"].get(name, module.state_dict()))
        if name in state["done"] or minutes <= 0:
            return
        optimizer = torch.optim.Adam(trainable, lr=args.lr)
        if name in state["optimizers"]:
            optimizer.load_state_dict(state["optimizers"][name])
        step, spent = state["steps"].get(name, 0), state["seconds"].get(name, 0.0)
        history = state["history"].setdefault(name, [])
        started, running = time.perf_counter() - spent, {}
        progress = tqdm(desc=f"{code} {name}", unit="step", initial=step, mininterval=10)
        while step < args.max_steps and time.perf_counter() - started < minutes * 60:
            loss, parts = loss_fn(step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for key, value in parts.items():
                running.setdefault(key, []).append(float(value))
            step += 1
            progress.update(1)
            if step % args.log_every == 0:
                entry = {"stage": name, "step": step,
                         "seconds": round(time.perf_counter() - started, 1),
                         **{k: round(float(np.mean(v)), 4) for k, v in running.items()},
                         **(log_fn() if log_fn else {})}
                history.append(entry)
                running = {}
                progress.write(json.dumps(entry))
                state["models"][name], state["optimizers"][name] = module.state_dict(), \
                    optimizer.state_dict()
                state["steps"][name], state["seconds"][name] = step, time.perf_counter() - started
                save_payload(work, state)
        progress.close()
        state["models"][name], state["steps"][name] = module.state_dict(), step
        state["seconds"][name] = time.perf_counter() - started
        state["optimizers"].pop(name, None)
        state["done"].append(name)
        save_payload(work, state)

    def batch(size):
        picked = rng.integers(0, len(train_crops), size)
        return flip_half(crops_to_tensor(train_crops[picked]), rng), train_labels[picked]

    # 1. External autoencoder (Eq. 6), shared by all attribute sets.
    if args.external.is_file():
        external, external_payload = load_external(args.external)
    else:
        external = ExternalAutoEncoder(config)

        def reconstruction_loss(_step):
            faces, _ = batch(32)
            loss = F.mse_loss(external(faces), faces)
            return loss, {"mse": loss.item()}

        run_stage("external", external, list(external.parameters()), reconstruction_loss,
                  args.external_minutes)
        external_payload = {"command": recorded_command("eeae"), "seed": args.seed,
                            "steps": state["steps"].get("external", 0),
                            "history": state["history"].get("external", [])}
        save_external(args.external, external, external_payload)
    external.eval().requires_grad_(False)

    # 2. FSN (Eq. 4).
    fsn = FeatureSelectionNetwork(attributes, config)

    def attribute_loss(logits, labels):
        return sum(F.cross_entropy(logits[:, n], labels[:, n]) for n in range(len(attributes)))

    def fsn_loss(_step):
        faces, labels = batch(64)
        loss = attribute_loss(fsn(faces), labels)
        return loss, {"ce": loss.item()}

    test_faces = crops_to_tensor(test_crops[:MONITOR_FACES])
    test_labels = torch.from_numpy(labels_for(keys, test_idx[:MONITOR_FACES], table, attributes))

    def fsn_accuracy():
        return {"test_accuracy": round(float((fsn.predict(test_faces) == test_labels.bool())
                                             .float().mean()), 4)}

    if args.fsn_from is not None:
        networks, payload = load_eeae(args.fsn_from)
        if payload["attributes"] != code:
            raise InvalidParameterError(f"--fsn-from {args.fsn_from} holds the set "
                                        f"{payload['attributes']!r}, not {code!r}")
        fsn.load_state_dict(networks["fsn"].state_dict())
    else:
        run_stage("fsn", fsn, list(fsn.parameters()), fsn_loss, args.fsn_minutes, fsn_accuracy)
    fsn.eval().requires_grad_(False)

    # 3. PRN (Eq. 7) and 4. SPRN (Eq. 8): the PEN's original descriptors are computed once.
    pen = PEN(args.pen_size)
    train_descriptors = torch.from_numpy(pen.descriptors(train_crops, args.cache / "eeae_pen"))
    test_descriptors = pen.descriptors(test_crops[:MONITOR_FACES])

    def multiple_loss(forward):
        """Eq. 7 / Eq. 8 around ``forward(faces) -> (x̂, first term)``. No flips here: the
        originals' PEN descriptors are cached for the unflipped crops."""
        def loss_fn(_step):
            picked = rng.integers(0, len(train_crops), args.batch_size)
            faces, labels = crops_to_tensor(train_crops[picked]), train_labels[picked]
            private, first = forward(faces)
            attribute = attribute_loss(fsn(private), labels)
            cosine = (pen(private) * train_descriptors[picked]).sum(1).mean()
            loss = first + args.alpha1 * attribute + args.alpha2 * cosine
            return loss, {"first": first.item(), "ce": attribute.item(), "cos": cosine.item()}
        return loss_fn

    internal = InternalAutoEncoder(config)
    prn = PrivacyRemovalNetwork(external, internal)

    def prn_forward(faces):
        # L_i(d, y): the internal output must become the FSN's feature map of the original.
        with torch.no_grad():
            d, representation = fsn.features(faces), external.encode(faces)
        y = internal(representation)
        return external.decode(y), F.mse_loss(y, d)

    run_stage("prn", internal, list(internal.parameters()), multiple_loss(prn_forward),
              args.prn_minutes,
              lambda: monitor(prn, internal, fsn, pen, test_faces, test_labels, test_descriptors))
    internal.eval()

    sprn = None
    if args.sprn_minutes > 0 or "sprn" in state["done"]:
        sprn = copy.deepcopy(external).requires_grad_(True).train()

        def sprn_forward(faces):
            private = sprn(faces)
            return private, F.mse_loss(private, faces)  # L_e of Eq. 8

        run_stage("sprn", sprn, list(sprn.parameters()), multiple_loss(sprn_forward),
                  args.sprn_minutes,
                  lambda: monitor(sprn, sprn, fsn, pen, test_faces, test_labels, test_descriptors))
        sprn.eval()

    metrics = {"attributes": code, "summary": summary,
               "fsn": fsn_accuracy(),
               "prn": monitor(prn, internal, fsn, pen, test_faces, test_labels, test_descriptors),
               "steps": dict(state["steps"]),
               "seconds": {k: round(v, 1) for k, v in state["seconds"].items()}}
    if sprn is not None:
        metrics["sprn"] = monitor(sprn, sprn, fsn, pen, test_faces, test_labels, test_descriptors)
    path = save_eeae(args.out, code, fsn, internal, sprn, {
        "metrics": metrics, "history": state["history"], "seed": args.seed,
        "trained_with": ["faceres"], "pen_size": args.pen_size,
        "loss_weights": {"alpha1": args.alpha1, "alpha2": args.alpha2},
        "external_command": external_payload.get("command"),
        "command": recorded_command("eeae")})
    report_written(metrics, path)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return script_main(DESCRIPTION, add_arguments, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
