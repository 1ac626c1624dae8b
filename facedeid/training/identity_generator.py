"""Train the disentangled identity / attribute generator (book ch. 5 §5.3.8, ch. 6 §6.3.2).

Stage I of IdentityDP and of the password-invertible method
(:mod:`facedeid.models.identity_generator`). Per step, a batch of aligned training crops ``X``:

* identity codes ``r_id`` come from faceres (frozen, the identity encoder) through the fitted
  :class:`~facedeid.models.identity_generator.IdentitySpace`;
* half the batch is drawn with its own identity (source = target), the other half with the
  identity of another face of the batch (the book's "two faces randomly sampled ... fused";
  the reconstruction term is 0 for those);
* loss (Eq. 5.18 / 6.15) ``λ_adv·L_adv + λ_id·L_id + λ_att·L_att + λ_rec·L_rec`` with
  ``L_id = 1 − cos(faceres(X̂), decode(r_id))`` (Eq. 5.15), ``L_att = ½ Σ_k mean‖r_att^k(X̂) −
  r_att^k(X)‖²`` (Eq. 5.16, mean over elements so levels weigh alike), ``L_rec = ½ mean‖X̂ − X‖²``
  on the same-identity half (Eq. 5.17), and a PatchGAN critic with R1 for ``L_adv``
  (non-saturating). Weights default to the book's: ``λ_id = 5``, ``λ_att = λ_rec = 10``,
  ``λ_adv = 0.1`` (ch. 6); Adam β = (0, 0.999), learning rate 4e-4 (ch. 5 §5.4.3).

Data: the face generator's training crops (``celeba-first10k`` minus every ``celeba-id200``
person, plus the 160 train people of the identity-disjoint split); the 40 test people are only
measured (held-out reconstruction error and identity-transfer cosine), never trained on. The
identity space and its sensitivity Δf are fitted on the training crops' descriptors.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .runs import add_generator_run_arguments, recorded_command, report_written, script_main

DESCRIPTION = """\
Train Stage I of IdentityDP and the password-invertible method (book ch. 5-6): an identity
representation (faceres descriptor in whitened principal axes), a U-Net attribute encoder and
an AAD fusion generator that redraws a face from the two. Starts from the face generator's
filters. Training faces are never test people of the identity-disjoint split.

examples:
  facedeid train identity-generator --generator facedeid/checkpoints/face_generator.pt \\
      --out facedeid/checkpoints/identity_generator.pt --minutes 45
  facedeid train identity-generator --generator gen.pt --out idgen.pt --resume --minutes 10
"""

WORK_FORMAT = "facedeid.identity_generator_training/1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generator_run_arguments(parser, "face generator checkpoint whose filters start the "
                                "networks")
    parser.add_argument("--rank", type=int, default=128, help="length of the identity code")
    parser.add_argument("--skip-levels", type=int, default=1,
                        help="U-Net levels after the bottleneck with a skip from the contracting "
                             "path (more: sharper redraws that ignore the identity code)")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=45.0, help="wall-clock budget")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--critic-lr", type=float, default=4e-4)
    parser.add_argument("--id-weight", type=float, default=5.0, help="lambda_id")
    parser.add_argument("--att-weight", type=float, default=10.0, help="lambda_att")
    parser.add_argument("--rec-weight", type=float, default=10.0, help="lambda_rec")
    parser.add_argument("--adv-weight", type=float, default=0.1, help="lambda_adv (0: no critic)")
    parser.add_argument("--r1", type=float, default=0.1, help="R1 penalty weight on real faces")
    parser.add_argument("--r1-every", type=int, default=4)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def held_out_report(model, identity_encoder, faces, codes) -> dict:
    """On never-trained-on people: reconstruction error and identity cosines.

    ``cos_self``: faceres cosine between the redrawn face and the face's own (decoded) code;
    ``cos_swap``: between a face drawn with another test face's identity and that identity;
    ``cos_swap_orig``: the same drawing against the *original* face's code (how much of the
    original identity the attribute path still carries).
    """
    import torch

    with torch.no_grad():
        rebuilt = model(codes, faces)
        other = codes.roll(1, 0)
        swapped = model(other, faces)
        targets, originals = model.space.decode(codes), model.space.decode(other)
        described_self, described_swap = identity_encoder(rebuilt), identity_encoder(swapped)
        return {"held_l1": round(float((rebuilt - faces).abs().mean()), 4),
                "cos_self": round(float((described_self * targets).sum(1).mean()), 4),
                "cos_swap": round(float((described_swap * originals).sum(1).mean()), 4),
                "cos_swap_orig": round(float((described_swap * targets).sum(1).mean()), 4)}


def train(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from ..io.datasets import default_data_root
    from ..models.checkpoint_files import read_payload, save_payload
    from ..models.face_generator import PatchDiscriminator, load_generator
    from ..models.identity_generator import (IdentityEncoder, IdentityGenerator,
                                             IdentityGeneratorConfig, save_identity_generator)
    from ..models.tensors import crops_to_tensor
    from .face_crops import generator_training_crops
    from .generator import flip_half

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = args.work or args.out.with_suffix(".work.pt")
    gen_encoder, generator, gen_payload = load_generator(args.generator)
    crops, held, summary = generator_training_crops(
        args.data_root or default_data_root(), generator.config.image_size, args.cache,
        args.threads, args.limit)
    print(json.dumps(summary), flush=True)
    identity_encoder = IdentityEncoder()
    descriptors = torch.from_numpy(identity_encoder.descriptors(crops, args.cache / "eeae_pen"))
    config = IdentityGeneratorConfig(image_size=generator.config.image_size,
                                     widths=generator.config.widths, identity_rank=args.rank,
                                     skip_levels=args.skip_levels)
    model = IdentityGenerator(config)
    critic = PatchDiscriminator(config.image_size)
    networks = [p for name, p in model.named_parameters() if not name.startswith("space.")]
    optimizer = torch.optim.Adam(networks, lr=args.lr, betas=(0.0, 0.999))
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, betas=(0.0, 0.999))
    step, history, spent = 0, [], 0.0
    if args.resume:  # the identity space comes back with the model: no second fit
        state = read_payload(work, WORK_FORMAT, "identity-generator training state",
                             "start without --resume")
        model.load_state_dict(state["model"])
        critic.load_state_dict(state["critic"])
        optimizer.load_state_dict(state["optimizer"])
        critic_optimizer.load_state_dict(state["critic_optimizer"])
        step, history, spent = state["step"], state["history"], state["seconds"]
        space_stats = state.get("space_stats", {})
        rng = np.random.default_rng([args.seed, step])
    else:
        copied = model.start_from_face_generator(gen_encoder, generator)
        space_stats = model.space.fit(descriptors)
        print(json.dumps({"copied_from_face_generator": copied, "identity_space": space_stats}),
              flush=True)
    codes_all = model.space.encode(descriptors)
    pick = np.random.default_rng(0).permutation(len(held))[:32]
    held_faces = crops_to_tensor(held[pick])
    with torch.no_grad():
        held_codes = model.space.encode(identity_encoder(held_faces))

    def save_work():
        save_payload(work, {"format": WORK_FORMAT, "step": step, "model": model.state_dict(),
                            "critic": critic.state_dict(), "optimizer": optimizer.state_dict(),
                            "critic_optimizer": critic_optimizer.state_dict(),
                            "history": history, "seconds": spent, "space_stats": space_stats})

    started = time.perf_counter() - spent
    progress = tqdm(total=args.steps, initial=step, desc="identity-generator", unit="step",
                    mininterval=10)
    running: dict[str, list[float]] = {}
    half = args.batch_size // 2
    while step < args.steps and time.perf_counter() - started < args.minutes * 60:
        index = rng.integers(0, len(crops), args.batch_size)
        faces = flip_half(crops_to_tensor(crops[index]), rng)
        codes = codes_all[index].clone()
        codes[half:] = codes_all[rng.integers(0, len(crops), len(codes) - half)]  # another face
        attributes = model.attributes(faces)
        drawn = model.fusion(codes, attributes)
        identity = 1 - (identity_encoder(drawn) * model.space.decode(codes)).sum(1)
        redrawn_attributes = model.attributes(drawn)
        attribute = 0.5 * sum((a - b.detach()).pow(2).mean() for a, b in
                              zip(redrawn_attributes, attributes))
        reconstruction = 0.5 * (drawn[:half] - faces[:half]).pow(2).mean()
        loss = args.id_weight * identity.mean() + args.att_weight * attribute + \
            args.rec_weight * reconstruction
        if args.adv_weight > 0:
            adversarial = F.softplus(-critic(drawn)).mean()
            loss = loss + args.adv_weight * adversarial
            running.setdefault("adv", []).append(adversarial.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if args.adv_weight > 0:
            real = faces.detach().requires_grad_(step % args.r1_every == 0)
            real_logits, fake_logits = critic(real), critic(drawn.detach())
            critic_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            if real.requires_grad:
                gradient, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                critic_loss = critic_loss + args.r1 * args.r1_every * 0.5 * \
                    gradient.pow(2).flatten(1).sum(1).mean()
            critic_optimizer.zero_grad()
            critic_loss.backward()
            critic_optimizer.step()
            running.setdefault("critic", []).append(critic_loss.item())
        for name, value in (("id_same", identity[:half].mean()), ("id_swap", identity[half:].mean()),
                            ("att", attribute), ("rec", reconstruction)):
            running.setdefault(name, []).append(value.item())
        step += 1
        progress.update(1)
        if step % args.log_every == 0:
            spent = time.perf_counter() - started
            model.eval()
            entry = {"step": step, "seconds": round(spent, 1),
                     **{k: round(float(np.mean(v)), 4) for k, v in running.items()},
                     **held_out_report(model, identity_encoder, held_faces, held_codes)}
            model.train()
            history.append(entry)
            running = {}
            progress.write(json.dumps(entry))
        if step % args.checkpoint_every == 0:
            spent = time.perf_counter() - started
            save_work()
    progress.close()
    spent = time.perf_counter() - started
    save_work()
    model.eval()
    metrics = {"steps": step, "seconds": round(spent, 1), "identity_space": space_stats,
               "held_out": held_out_report(model, identity_encoder, held_faces, held_codes),
               "data": summary}
    path = save_identity_generator(args.out, model, {
        "metrics": metrics, "history": history, "seed": args.seed, "trained_with": ["faceres"],
        "generator_command": gen_payload.get("command"),
        "command": recorded_command("identity-generator"),
        "loss_weights": {"id": args.id_weight, "att": args.att_weight, "rec": args.rec_weight,
                         "adv": args.adv_weight, "r1": args.r1}})
    report_written(metrics, path)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return script_main(DESCRIPTION, add_arguments, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
