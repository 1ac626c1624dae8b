"""``facedeid train``: train the small learned models shipped in facedeid/checkpoints/.

Each trainer is a sub-command of ``train`` (``facedeid train qmvae ...``); add another by
writing a ``_register_NAME(trainers)`` function and calling it from :func:`register`.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import InvalidInputError, InvalidParameterError
from ..training.qmvae import MODES, TrainConfig

HELP = "train a learned model (qmvae, generator, private-encoder, eeae)"

QMVAE_DESCRIPTION = """\
Train QM-VAE (Qiu et al. 2022): the de-identified versions of every face (--inputs) are fused
by a VQ-VAE trained with Eq. 7, alpha * service loss + (1 - alpha) * reconstruction + VQ terms.
The service (--evaluator) is a black box: by default (--mode surrogate) a small student network
is fitted online to the service's answers and its gradient stands in for the service's; with
--mode blackbox the gradient is a zeroth-order NES estimate from queries alone; with
--mode whitebox (expression only) it is back-propagated through the real network. The service
sees each fused face pasted back into its photo and cropped where it would crop it
(--service-view pasted), as in the paper's workflow. The original face is a training target
only, never an input.

Images in --data are sorted by name; the first --train-fraction are trained on, the rest are
used to report the service loss rate. Unreadable images and images without a detected face are
skipped and counted. Checkpoints are written atomically every --checkpoint-every epochs;
--resume continues an interrupted run from --out.

examples:
  facedeid train qmvae --data ../shared/data/celeba-first10k/img_align_celeba --limit 1000 \\
      --evaluator expression --alpha 0.9 --epochs 40 --out qmvae.pt
  facedeid train qmvae --data faces/ --inputs blindfold,mosaic:block_size=6,laplace --resume \\
      --out qmvae.pt
  facedeid anonymize photo.jpg -o out.jpg --method qmvae --param checkpoint=qmvae.pt
"""


def split_input_list(text: str) -> list[str]:
    """``"blindfold,mosaic:block_size=4,levels=2,laplace"`` -> one spec per method.

    A comma-separated token of the form ``key=value`` without a ``:`` is a further parameter
    of the method before it, so method parameters can be written with commas too.
    """
    specs: list[str] = []
    for token in filter(None, (part.strip() for part in text.split(","))):
        if "=" in token and ":" not in token:
            if not specs:
                raise InvalidParameterError(f"--inputs: parameter {token!r} has no method before it")
            specs[-1] += ("," if ":" in specs[-1] else ":") + token
        else:
            specs.append(token)
    if not specs:
        raise InvalidParameterError("--inputs needs at least one method")
    return specs


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=HELP)
    trainers = parser.add_subparsers(dest="trainer", metavar="MODEL")
    _register_qmvae(trainers)
    _register_generator(trainers)
    _register_private_encoder(trainers)
    _register_eeae(trainers)
    _register_identity_generator(trainers)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _register_qmvae(trainers) -> None:
    parser = trainers.add_parser("qmvae", help="QM-VAE multi-input VQ-VAE (Qiu et al. 2022)",
                                 description=QMVAE_DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of face images")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--train-fraction", type=float, default=0.8,
                        help="first fraction of the images to train on (default 0.8, as §5.1)")
    parser.add_argument("--evaluator", default="expression",
                        help="service to preserve: expression (default) or attributes")
    parser.add_argument("--mode", choices=MODES, default=TrainConfig.mode,
                        help="how the service loss gets a gradient: surrogate (default; an "
                             "online student of the black box), blackbox (NES estimate) or "
                             "whitebox (back-propagation, expression only)")
    parser.add_argument("--reconstruction", choices=("mse", "sse"),
                        default=TrainConfig.reconstruction,
                        help="reconstruction term of Eq. 7: per-pixel mean or per-face sum of "
                             "squared errors (default %(default)s)")
    parser.add_argument("--service-view", choices=("pasted", "crop"),
                        default=TrainConfig.service_view,
                        help="what the service is shown in training: the fused face pasted "
                             "back and cropped as the service crops it, or the bare crop")
    parser.add_argument("--surrogate-warmup", type=int, default=TrainConfig.surrogate_warmup_steps,
                        help="student steps on the originals' and inputs' answers before "
                             "training (surrogate mode; default %(default)s)")
    parser.add_argument("--identity-weight", type=float, default=0.0,
                        help="gamma of an extra term pushing the fused face away from the "
                             "original's identity (project's surrogate recognizer; 0 = paper)")
    parser.add_argument("--identity-margin", type=float, default=0.0,
                        help="cosine below which the identity term stops pushing")
    parser.add_argument("--service-head", type=float, default=0.0, metavar="WEIGHT",
                        help="weight of a service head on the quantized codes, trained to give "
                             "the black box's answer on the original, so the codes carry the "
                             "service's decision (0 = the paper's model)")
    parser.add_argument("--alpha", type=float, default=TrainConfig.alpha,
                        help="service weight of Eq. 7 (default %(default)s, the best of the "
                             "measured sweep; see docs/benchmarks.md)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--inputs", default="blindfold,mosaic:block_size=4,laplace,cartoon",
                        help="de-identification methods fused, comma-separated, each optionally "
                             "name:key=value (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="aligned crop side (default 64)")
    parser.add_argument("--score", choices=("ce", "kl"), default="ce",
                        help="soft consistency score standing in for Eq. 8 (default ce)")
    parser.add_argument("--pairs", type=int, default=1, help="NES direction pairs per face")
    parser.add_argument("--sigma", type=float, default=0.05, help="NES perturbation size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=32, help="widest layer (default 32)")
    parser.add_argument("--latent-dim", type=int, default=32, help="codebook vector size")
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--downsamples", type=int, default=3,
                        help="stride-2 stages; latent grid = size / 2**downsamples (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--out", default="qmvae.pt", help="checkpoint path (default qmvae.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from --out if present")
    parser.add_argument("--cache-dir", default="runs/qmvae_cache",
                        help="where the de-identified input stacks are cached")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine 2 threads "
                             "ran up to 200x slower from OpenMP oversubscription)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_qmvae)


def run_qmvae(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..models.qmvae import QMVAEConfig
    from ..training.qmvae import train_qmvae
    from ..training.qmvae_data import build_face_stacks, list_images

    if not 0.0 < args.train_fraction <= 1.0:
        raise InvalidParameterError("--train-fraction must be in (0, 1]")
    torch.set_num_threads(max(1, args.threads))
    inputs = split_input_list(args.inputs)
    config = TrainConfig(alpha=args.alpha, epochs=args.epochs, mode=args.mode,
                         evaluator=args.evaluator, score=args.score, batch_size=args.batch_size,
                         reconstruction=args.reconstruction, service_view=args.service_view,
                         identity_weight=args.identity_weight,
                         identity_margin=args.identity_margin,
                         service_head_weight=args.service_head,
                         surrogate_warmup_steps=args.surrogate_warmup,
                         sigma=args.sigma, pairs=args.pairs, seed=args.seed,
                         checkpoint_every=args.checkpoint_every)
    config.check()
    model_config = QMVAEConfig(inputs=inputs, image_size=args.size, hidden=args.hidden,
                               latent_dim=args.latent_dim, codebook_size=args.codebook_size,
                               downsamples=args.downsamples)
    paths = list_images(args.data, args.limit)
    cut = int(round(len(paths) * args.train_fraction))
    train_paths, test_paths = paths[:cut], paths[cut:]
    train = build_face_stacks(train_paths, inputs, args.size, cache_dir=args.cache_dir,
                              progress=not args.quiet)
    test = None
    if test_paths:
        try:
            test = build_face_stacks(test_paths, inputs, args.size, cache_dir=args.cache_dir,
                                     progress=not args.quiet)
        except InvalidInputError as error:  # training can go on; only the test report is lost
            print(f"test split unusable, no service loss rate will be reported: {error}",
                  file=sys.stderr)
    for label, part, count in (("train", train, len(train_paths)),
                               ("test", test, len(test_paths))):
        if part is not None:
            print(f"{label}: {len(part)} faces from {count} images; skipped {part.skipped or 'none'}",
                  file=sys.stderr)
    _, history = train_qmvae(train, config, model_config, test=test, out=args.out,
                             resume=args.resume, progress=not args.quiet)
    last = history[-1] if history else {}
    print(json.dumps({"checkpoint": args.out, **{k: v for k, v in last.items()
                                                  if not isinstance(v, (dict, list))}},
                     default=lambda value: float(value) if isinstance(value, np.floating) else str(value)))
    return 0


def _refuse_overwriting_inputs(out, *inputs) -> None:
    """A trainer's --out must never replace a file the run reads (the generator it stands on,
    its own resume state)."""
    from pathlib import Path

    target = Path(out).resolve()
    for name, path in inputs:
        if path is not None and Path(path).resolve() == target:
            raise InvalidParameterError(f"--out {out} is the {name} this run reads; choose "
                                        "another output path")


def _register_model_trainer(trainers, name: str, module, help_text: str, check=None) -> None:
    """``facedeid train NAME``: the options and trainer of ``facedeid.training.MODULE``, after
    ``check(args)`` and the rule that --out never replaces a file the run reads."""
    parser = trainers.add_parser(name, help=help_text, description=module.DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        if check is not None:
            check(args)
        _refuse_overwriting_inputs(args.out, ("--generator checkpoint",
                                              getattr(args, "generator", None)),
                                   ("--external autoencoder", getattr(args, "external", None)),
                                   ("--fsn-from checkpoint", getattr(args, "fsn_from", None)),
                                   ("--work training state", args.work))
        module.train(args)
        return 0

    parser.set_defaults(handler=run)


def _register_generator(trainers) -> None:
    from ..training import generator
    _register_model_trainer(trainers, "generator", generator,
                            "face generator + encoder (base of private_encoder)")


def _check_beta(args: argparse.Namespace) -> None:
    if args.beta is not None and not 0.0 <= args.beta <= 1.0:
        raise InvalidParameterError(f"--beta must be in [0, 1], got {args.beta}")


def _register_private_encoder(trainers) -> None:
    from ..training import private_encoder
    _register_model_trainer(trainers, "private-encoder", private_encoder,
                            "Private-Encoder (seed 003) with its beta knob", _check_beta)


def _check_attribute_set(args: argparse.Namespace) -> None:
    from ..models.eeae import attribute_names
    try:
        attribute_names(args.attributes)
    except ValueError as error:
        raise InvalidParameterError(f"--attributes: {error}") from None


def _register_eeae(trainers) -> None:
    from ..training import eeae
    _register_model_trainer(trainers, "eeae", eeae,
                            "EEAE embedded autoencoders for an attribute set (seed 004)",
                            _check_attribute_set)


def _register_identity_generator(trainers) -> None:
    from ..training import identity_generator
    _register_model_trainer(trainers, "identity-generator", identity_generator,
                            "identity / attribute generator of identity_dp and password "
                            "(book ch. 5-6)")
