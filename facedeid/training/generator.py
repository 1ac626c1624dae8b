"""Train the face generator (:mod:`facedeid.models.face_generator`) and its encoder.

Losses per step (weights are flags): L1 reconstruction, faceres-LPIPS perceptual
(:class:`facedeid.models.perceptual.FaceresPerceptual`) and, after ``--adv-start`` steps of plain
auto-encoding, the non-saturating adversarial loss of a PatchGAN critic regularised by R1 on
real faces (lazy: every ``--r1-every`` steps, scaled up accordingly).

Data (:func:`facedeid.training.face_crops.generator_training_crops`): aligned crops of
``celeba-first10k`` minus every ``celeba-id200`` person, plus the 160 train people of the
identity-disjoint split; the 40 test people are only *measured* (held-out L1 / perceptual every
``--log-every`` steps), never trained on. Random horizontal flips.

The schedule is bounded by ``--steps`` and by ``--minutes`` (whichever ends first), so a busy
machine trains fewer steps instead of running for ever; ``--resume`` continues from ``--work``.
At the end the sampling prior is fitted to the codes of all training faces and an fp16
inference checkpoint (encoder + generator + prior, no critic, no optimizer) is written to
``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .runs import recorded_command, report_written, script_main

DESCRIPTION = """\
Train the face generator (a style-modulated decoder over a spatial + global code) and the
encoder that inverts it, on aligned CelebA crops of people who are never test subjects. It is
the base of private_encoder and the other generator-based methods.

examples:
  facedeid train generator --out facedeid/checkpoints/face_generator.pt --minutes 50
  facedeid train generator --out gen.pt --work runs/gen/train.pt --resume --minutes 20
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True,
                        help="fp16 inference checkpoint to write at the end")
    parser.add_argument("--work", type=Path, default=Path("runs/gen/generator_train.pt"),
                        help="full training state (critic, optimizers), saved every "
                             "--checkpoint-every steps and read by --resume")
    parser.add_argument("--resume", action="store_true", help="continue from --work")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding celeba-first10k/ and celeba-id200/ (default ../shared/data)")
    parser.add_argument("--cache", type=Path, default=Path("runs/gen_crops"),
                        help="folder for the cached aligned crops (.npz)")
    parser.add_argument("--size", type=int, default=64, help="crop side in pixels (64 or 128)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N training (and held-out) images: quick trials")
    parser.add_argument("--steps", type=int, default=100_000, help="most optimisation steps")
    parser.add_argument("--minutes", type=float, default=50.0, help="wall-clock budget")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4, help="encoder + generator learning rate")
    parser.add_argument("--critic-lr", type=float, default=2e-3,
                        help="critic learning rate (two time-scale: a critic at the generator's "
                             "rate stayed at chance for 1,600 steps, see docs/checkpoints.md)")
    parser.add_argument("--perceptual-weight", type=float, default=1.0)
    parser.add_argument("--adv-weight", type=float, default=0.05)
    parser.add_argument("--adv-start", type=int, default=300,
                        help="steps of pure auto-encoding before the critic joins")
    parser.add_argument("--r1", type=float, default=0.1, help="R1 penalty weight (gamma)")
    parser.add_argument("--r1-every", type=int, default=4)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def plain_arguments(args: argparse.Namespace) -> dict:
    """The run's options as plain values (paths as text, no CLI handler) for checkpoints."""
    return {key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items() if not callable(value)}


def flip_half(batch, rng: np.random.Generator):
    flip = rng.random(len(batch)) < 0.5
    batch[flip] = batch[flip].flip(-1)
    return batch


def held_out_scores(encoder, generator, perceptual, faces) -> dict[str, float]:
    """Reconstruction L1 and faceres-LPIPS on faces of people never trained on."""
    import torch

    with torch.no_grad():
        rebuilt = generator(encoder(faces))
        return {"held_out_l1": float((rebuilt - faces).abs().mean()),
                "held_out_lpips": float(perceptual(rebuilt, faces).mean())}


def train(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from ..io.datasets import default_data_root
    from ..models.face_generator import (FaceEncoder, FaceGenerator, GeneratorConfig,
                                         PatchDiscriminator)
    from ..models.checkpoint_files import read_payload, save_payload
    from ..models.perceptual import FaceresPerceptual
    from ..models.tensors import crops_to_tensor
    from .face_crops import generator_training_crops

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    crops, held, summary = generator_training_crops(
        args.data_root or default_data_root(), args.size, args.cache, args.threads, args.limit)
    print(json.dumps(summary), flush=True)
    widths = (256, 128, 64, 32) if args.size == 64 else (256, 128, 64, 32, 24)
    config = GeneratorConfig(image_size=args.size, widths=widths)
    encoder, generator, critic = FaceEncoder(config), FaceGenerator(config), PatchDiscriminator(
        args.size)
    perceptual = FaceresPerceptual()
    autoencoder_params = list(encoder.parameters()) + list(generator.parameters())
    optimizer = torch.optim.Adam(autoencoder_params, lr=args.lr, betas=(0.5, 0.99))
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, betas=(0.5, 0.99))
    step, history, spent = 0, [], 0.0
    if args.resume:
        state = read_payload(args.work, "facedeid.generator_training/1", "generator training state",
                             "start without --resume")
        encoder.load_state_dict(state["encoder"])
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        optimizer.load_state_dict(state["optimizer"])
        critic_optimizer.load_state_dict(state["critic_optimizer"])
        step, history, spent = state["step"], state["history"], state["seconds"]
        rng = np.random.default_rng([args.seed, step])
        for each_optimizer, rate in ((optimizer, args.lr), (critic_optimizer, args.critic_lr)):
            for group in each_optimizer.param_groups:  # the rates given now, not the saved ones
                group["lr"] = rate
    held_faces = crops_to_tensor(held[np.random.default_rng(0).permutation(len(held))[:64]])

    def save_work():
        save_payload(args.work, {"format": "facedeid.generator_training/1", "step": step,
                                 "encoder": encoder.state_dict(),
                                 "generator": generator.state_dict(),
                                 "critic": critic.state_dict(), "optimizer": optimizer.state_dict(),
                                 "critic_optimizer": critic_optimizer.state_dict(),
                                 "history": history, "seconds": spent,
                                 "arguments": plain_arguments(args)})

    started = time.perf_counter() - spent
    budget = args.minutes * 60
    progress = tqdm(total=args.steps, initial=step, desc="generator", unit="step", mininterval=10)
    running: dict[str, list[float]] = {}
    while step < args.steps and time.perf_counter() - started < budget:
        index = rng.integers(0, len(crops), args.batch_size)
        real = flip_half(crops_to_tensor(crops[index]), rng)
        adversarial = step >= args.adv_start and args.adv_weight > 0
        if adversarial:  # critic step: real vs (detached) reconstructions, R1 on reals
            with torch.no_grad():
                fake = generator(encoder(real))
            real.requires_grad_(step % args.r1_every == 0)
            real_logits, fake_logits = critic(real), critic(fake)
            critic_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            if real.requires_grad:
                gradient, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                critic_loss = critic_loss + 0.5 * args.r1 * args.r1_every * \
                    gradient.pow(2).flatten(1).sum(1).mean()
            critic_optimizer.zero_grad()
            critic_loss.backward()
            critic_optimizer.step()
            real = real.detach()
            running.setdefault("critic", []).append(critic_loss.item())
        rebuilt = generator(encoder(real))
        l1 = (rebuilt - real).abs().mean()
        lpips = perceptual(rebuilt, real).mean()
        loss = l1 + args.perceptual_weight * lpips
        if adversarial:
            adv = F.softplus(-critic(rebuilt)).mean()
            loss = loss + args.adv_weight * adv
            running.setdefault("adv", []).append(adv.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running.setdefault("l1", []).append(l1.item())
        running.setdefault("lpips", []).append(lpips.item())
        step += 1
        progress.update(1)
        if step % args.log_every == 0:
            spent = time.perf_counter() - started
            entry = {"step": step, "seconds": round(spent, 1),
                     **{k: round(float(np.mean(v)), 4) for k, v in running.items()},
                     **{k: round(v, 4) for k, v in held_out_scores(encoder, generator, perceptual,
                                                                   held_faces).items()}}
            history.append(entry)
            running = {}
            progress.write(json.dumps(entry))
        if step % args.checkpoint_every == 0:
            spent = time.perf_counter() - started
            save_work()
    progress.close()
    spent = time.perf_counter() - started
    save_work()
    return export(args, encoder, generator, crops, held_faces, perceptual, history, summary, step,
                  spent)


def export(args, encoder, generator, crops, held_faces, perceptual, history, summary, step,
           spent) -> dict:
    """Fit the sampling prior on all training codes and write the fp16 inference checkpoint."""
    import torch

    from ..models.face_generator import save_generator
    from ..models.tensors import crops_to_tensor

    encoder.eval()
    generator.eval()
    with torch.no_grad():
        codes = torch.cat([encoder(crops_to_tensor(crops[start:start + 256])).flat()
                           for start in range(0, len(crops), 256)])
    generator.fit_latent_prior(codes)
    metrics = {"steps": step, "seconds": round(spent, 1), "data": summary,
               **held_out_scores(encoder, generator, perceptual, held_faces)}
    path = save_generator(args.out, encoder, generator,
                          {"metrics": metrics, "history": history,
                           "command": recorded_command("generator"), "seed": args.seed})
    report_written(metrics, path)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return script_main(DESCRIPTION, add_arguments, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
