"""Train Private-Encoder (seed 003, Eq. 1-4) against the frozen face generator.

Loss per face, Eq. 4: ``λ1 · L2(x, x̂) + λ2 · LPIPS(x, x̂) + λ3 · |β − cos(ID(x), ID(x̂))|`` with

* L2 (Eq. 1): mean squared pixel error;
* LPIPS (Eq. 2): faceres-LPIPS (:class:`facedeid.models.perceptual.FaceresPerceptual`, faceres's
  first blocks; no ImageNet LPIPS weights exist offline);
* ID (Eq. 3): faceres's 1024-D descriptor (:class:`facedeid.models.faceres.FaceresNet`, at its
  native 224 px: at 112 px its same/different-person AUC on 600 train faces drops from 0.974
  to 0.814). The paper uses ArcFace here and CurricularFace to measure; faceres is the one
  recognizer this project *trains against*, so every faceres privacy figure of this method is
  marked "seen in training", and dlib and the surrogate are the independent attackers.

β: by default drawn uniformly from [0, 1] for every face of every step, and fed to the PENs, so
one model learns the whole knob (``--beta B`` trains the paper's one-model-per-β variant for the
comparison in docs/benchmarks.md). The encoder is the generator's own, frozen; the PENs start
from the identity map, so step 0 is the generator's reconstruction. Beyond the paper, the PENs'
edit is confined to the principal axes of real faces' codes and costs its length in units of
their spread (``--prior-weight``; :meth:`FaceGenerator.edit_cost`): without it, the first model
lowered faceres's similarity with striped adversarial textures instead of another face.

Data: the generator's training crops (:func:`facedeid.training.face_crops.generator_training_crops`);
the 40 test people are never trained on, only reported (held-out cosine and L2 per β).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .runs import add_generator_run_arguments, recorded_command, report_written, script_main

DESCRIPTION = """\
Train Private-Encoder (Eq. 4 of seed 003): a feature-pyramid encoder with one privacy
embedding network per latent code of the face generator, so that the decoded face keeps pose,
expression and colours (pixel L2 + faceres-LPIPS) while its faceres identity similarity to the
input is beta (|beta - cos| loss). By default beta is an input of the model, drawn at random in
training, so one checkpoint serves every beta; --beta trains one fixed-beta model instead.

examples:
  facedeid train private-encoder --generator facedeid/checkpoints/face_generator.pt \\
      --out facedeid/checkpoints/private_encoder.pt --minutes 30
  facedeid train private-encoder --generator gen.pt --beta 0.2 --out pe_b02.pt --minutes 8
"""

WORK_FORMAT = "facedeid.private_encoder_training/1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generator_run_arguments(parser, "face generator checkpoint (facedeid train generator)")
    parser.add_argument("--beta", type=float, default=None,
                        help="train for this one beta (the paper's setting); default: beta is "
                             "an input, drawn uniformly in [0, 1] per face")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--l2-weight", type=float, default=1.0, help="lambda_1 of Eq. 4")
    parser.add_argument("--lpips-weight", type=float, default=0.5, help="lambda_2 of Eq. 4")
    parser.add_argument("--id-weight", type=float, default=1.0, help="lambda_3 of Eq. 4")
    parser.add_argument("--prior-weight", type=float, default=0.02,
                        help="weight of the latent-edit cost under the generator's code prior "
                             "(FaceGenerator.edit_cost, beyond the paper: edits cost their length "
                             "in units of real faces' variation)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def identity_cosine(faceres, original_descriptor, faces):
    """Eq. 3's cosine: faceres descriptors are unit length, so it is their dot product."""
    return (faceres(faces).descriptor * original_descriptor).sum(1)


def held_out_report(model, faceres, faces, descriptors, betas=(0.0, 0.2, 0.4, 1.0)) -> dict:
    """Mean faceres cosine and pixel L2 to the input at a few β, on never-trained-on people."""
    import torch

    report = {}
    with torch.no_grad():
        for beta in betas:
            private = model(faces, beta)
            cosine = identity_cosine(faceres, descriptors, private)
            report[f"cos@{beta:g}"] = round(float(cosine.mean()), 4)
            report[f"l2@{beta:g}"] = round(float((private - faces).pow(2).mean()), 5)
    return report


def train(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from ..io.datasets import default_data_root
    from ..models.checkpoint_files import read_payload, save_payload
    from ..models.face_generator import load_generator
    from ..models.faceres import load_faceres
    from ..models.perceptual import FaceresPerceptual
    from ..models.private_encoder import PrivateEncoder, PrivateFaceModel, save_private_encoder
    from .face_crops import generator_training_crops
    from ..models.tensors import crops_to_tensor
    from .generator import flip_half

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = args.work or args.out.with_suffix(".work.pt")
    gen_encoder, generator, gen_payload = load_generator(args.generator)
    config = generator.config
    crops, held, summary = generator_training_crops(
        args.data_root or default_data_root(), config.image_size, args.cache, args.threads,
        args.limit)
    print(json.dumps(summary), flush=True)
    private_encoder = PrivateEncoder(config)
    private_encoder.encoder.load_state_dict(gen_encoder.state_dict())
    # The encoder stays the generator's own (frozen): the PENs alone move the code, inside the
    # principal axes of real faces' codes.
    private_encoder.encoder.requires_grad_(False)
    private_encoder.edit_basis.copy_(generator.latent_basis)
    model = PrivateFaceModel(private_encoder, generator)
    faceres, perceptual = load_faceres(), FaceresPerceptual()
    optimizer = torch.optim.Adam([p for p in private_encoder.parameters() if p.requires_grad],
                                 lr=args.lr, betas=(0.9, 0.99))
    step, history, spent = 0, [], 0.0
    if args.resume:
        state = read_payload(work, WORK_FORMAT, "Private-Encoder training state",
                             "start without --resume")
        private_encoder.load_state_dict(state["private_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, spent = state["step"], state["history"], state["seconds"]
        rng = np.random.default_rng([args.seed, step])
    held_faces = crops_to_tensor(held[np.random.default_rng(0).permutation(len(held))[:32]])
    with torch.no_grad():
        held_descriptors = faceres(held_faces).descriptor

    def save_work():
        save_payload(work, {"format": WORK_FORMAT, "step": step,
                            "private_encoder": private_encoder.state_dict(),
                            "optimizer": optimizer.state_dict(), "history": history,
                            "seconds": spent})

    started = time.perf_counter() - spent
    progress = tqdm(total=args.steps, initial=step, desc="private-encoder", unit="step",
                    mininterval=10)
    running: dict[str, list[float]] = {}
    while step < args.steps and time.perf_counter() - started < args.minutes * 60:
        faces = flip_half(crops_to_tensor(crops[rng.integers(0, len(crops), args.batch_size)]), rng)
        beta = torch.full((len(faces),), float(args.beta)) if args.beta is not None \
            else torch.from_numpy(rng.random(len(faces)).astype(np.float32))
        with torch.no_grad():
            original_descriptor = faceres(faces).descriptor
        with torch.no_grad():  # the encoder is frozen: encode once, the PENs edit that code
            reconstruction_code = private_encoder.encoder(faces)
        private_code = private_encoder.edit(reconstruction_code, beta)
        private = generator(private_code)
        prior = generator.edit_cost(private_code, reconstruction_code).mean()
        l2 = (private - faces).pow(2).mean()
        lpips = perceptual(private, faces).mean()
        cosine = identity_cosine(faceres, original_descriptor, private)
        identity = (beta - cosine).abs().mean()
        loss = args.l2_weight * l2 + args.lpips_weight * lpips + args.id_weight * identity + \
            args.prior_weight * prior
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for name, value in (("l2", l2), ("lpips", lpips), ("id", identity), ("prior", prior)):
            running.setdefault(name, []).append(value.item())
        step += 1
        progress.update(1)
        if step % args.log_every == 0:
            spent = time.perf_counter() - started
            entry = {"step": step, "seconds": round(spent, 1),
                     **{k: round(float(np.mean(v)), 4) for k, v in running.items()},
                     **held_out_report(model, faceres, held_faces, held_descriptors)}
            history.append(entry)
            running = {}
            progress.write(json.dumps(entry))
        if step % args.checkpoint_every == 0:
            spent = time.perf_counter() - started
            save_work()
    progress.close()
    spent = time.perf_counter() - started
    save_work()
    metrics = {"steps": step, "seconds": round(spent, 1), "beta": args.beta,
               "held_out": held_out_report(model, faceres, held_faces, held_descriptors),
               "data": summary}
    path = save_private_encoder(args.out, model, {
        "metrics": metrics, "history": history, "seed": args.seed, "trained_with": ["faceres"],
        "generator_command": gen_payload.get("command"),
        "command": recorded_command("private-encoder"),
        "loss_weights": {"l2": args.l2_weight, "lpips": args.lpips_weight, "id": args.id_weight,
                         "prior": args.prior_weight}})
    report_written(metrics, path)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return script_main(DESCRIPTION, add_arguments, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
