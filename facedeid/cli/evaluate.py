"""``facedeid evaluate``: privacy, utility and quality of one or more methods on a dataset."""
from __future__ import annotations

import argparse
import sys

from ..engines import add_engine_arguments
from ..methods.registry import parse_params
from .common import add_detector_arguments, add_method_arguments, detector_params

HELP = "measure privacy, utility and quality of de-identification methods on a dataset"
DESCRIPTION = """\
Detect faces on the ORIGINAL images, de-identify them (same pipeline as `facedeid anonymize`),
then measure: privacy against face recognizers that know where the face is (identity distance,
SDR, rank-1 with the originals and with other photos of the same people as gallery, TAR at FAR,
and the parrot attack: the attacker de-identifies its gallery with the same method and a fresh
seed), utility through service evaluators (expression, attributes, detection, age_gender) and
image quality. Attackers default to dlib and faceres; each is marked "independent" or "seen in
training" (a learned method that optimised against it). A face the method fails on counts as
not protected. celeba-id200's test split is identity-disjoint (identity_split_disjoint.txt).
Writes OUT/results.json, OUT/report.md and PNG plots.

Datasets by name (looked up under --data-root, default ../shared/data): celeba-id200,
celeba-first10k, fer2013, ckplus48, att_faces, yalefaces; or give a folder path.

examples:
  facedeid evaluate --method mosaic --dataset celeba-id200 --split test --limit 200
  facedeid evaluate --compare blindfold mosaic "laplace:lam=0.2" "blur:kernel_size=31" \\
      --dataset celeba-first10k --split all --limit 1000 --out eval/table2
  facedeid evaluate --method blur --dataset ./my_faces --split all --services none
  facedeid evaluate --method mosaic --dataset celeba-id200 --engine ray --address auto

With --engine ray the method stage (every face de-identified, the parrot attacker's galleries
too) runs on Ray actors; detection on the originals, embeddings and metrics stay on this machine.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_method_arguments(parser, allow_weak_option=False)
    parser.set_defaults(method=None, seed=0)
    parser.add_argument("--compare", nargs="+", metavar="SPEC", default=None,
                        help='more methods in the same table: NAME or "NAME:k=v,k=v" '
                             '(e.g. mosaic "blur:kernel_size=31" "laplace:lam=0.2")')
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="celeba-id200", help="dataset name or folder")
    data.add_argument("--split", default=None,
                      help="split to evaluate: train/valid/test/all (default: test where the "
                           "dataset has splits, else all)")
    data.add_argument("--limit", type=int, default=None, help="first N images of the split")
    data.add_argument("--split-source", choices=("disjoint", "identity", "official", "auto"),
                      default="disjoint",
                      help="CelebA split file: disjoint = identity_split_disjoint.txt where it "
                           "exists (default; test people never trained on), identity = "
                           "identity_split.txt, official = list_eval_partition.txt")
    data.add_argument("--data-root", default=None, help="folder holding the named datasets")
    attack = parser.add_argument_group("attacker")
    attack.add_argument("--recognizer", action="append", default=None, metavar="NAME",
                        help="attacker, repeatable (default: dlib and faceres): "
                             + ", ".join(_recognizer_names())
                             + " (onnx needs --onnx-model)")
    attack.add_argument("--onnx-model", default=None, metavar="PATH",
                        help="ONNX face-embedding model for --recognizer onnx")
    attack.add_argument("--onnx-input-size", type=int, default=112)
    attack.add_argument("--onnx-threshold", type=float, default=0.6,
                        help="cosine-distance threshold of the ONNX model (default: 0.6)")
    attack.add_argument("--gallery-per-identity", type=int, default=10,
                        help="linking-attack photos per person (default: 10; 0 = all)")
    attack.add_argument("--no-parrot", action="store_true",
                        help="skip the parrot attack (it runs the method a second time)")
    attack.add_argument("--restored", action="store_true",
                        help="also report rank-1 after the adaptive restoration attack, for every "
                             "method an attacker was trained for (`facedeid attack restore "
                             "--method M`; others are skipped)")
    attack.add_argument("--restorer-cache", default=None, metavar="DIR",
                        help="where `facedeid attack restore` cached its attackers (default: "
                             "its own default)")
    attack.add_argument("--far", type=float, action="append", default=None,
                        help="FAR for TAR@FAR, repeatable (default: 0.01 and 0.001)")
    attack.add_argument("--cache-dir", default=None,
                        help="cache of original embeddings (default: ~/.cache/facedeid/embeddings)")
    attack.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    utility = parser.add_argument_group("utility and quality")
    utility.add_argument("--services", default="expression,attributes,detection,age_gender",
                         help="comma-separated service evaluators, or 'none'")
    utility.add_argument("--service-crop", choices=("haar", "box"), default="haar",
                         help="services find the face with Haar as in QM-VAE (default) or use the "
                              "known box")
    utility.add_argument("--fid-weights", default=None, metavar="PATH",
                         help="TorchScript/ONNX Inception-like feature extractor for FID")
    utility.add_argument("--lpips-weights", default=None, metavar="PATH",
                         help="TorchScript LPIPS module (x, y) -> distance")
    add_detector_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--out", default="evaluation", help="output folder (default: ./evaluation)")
    out.add_argument("--samples", type=int, default=6, help="faces in the before/after grid")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def _recognizer_names() -> list[str]:
    """Registered attacker names, for --help (the registry module is light: no models load)."""
    from ..evaluation.recognizers import RECOGNIZERS
    return RECOGNIZERS.names()


def build_specs(args: argparse.Namespace) -> list:
    from ..evaluation.runner import MethodSpec

    specs = []
    if args.method is not None or not args.compare:
        params = tuple(parse_params(args.param).items())
        specs.append(MethodSpec(args.method or "mosaic", params))
    elif args.param:
        from ..errors import InvalidParameterError
        raise InvalidParameterError("--param applies to --method; with --compare write "
                                    '"NAME:key=value" specs instead')
    specs += [MethodSpec.parse(text) for text in args.compare or []]
    return specs


def build_config(args: argparse.Namespace):
    from ..evaluation.recognizers import default_cache_dir
    from ..io.datasets import default_split
    from ..evaluation.runner import DEFAULT_FARS, EvalConfig

    from ..evaluation.runner import DEFAULT_RECOGNIZERS

    recognizers = args.recognizer or list(DEFAULT_RECOGNIZERS)
    recognizer_params = {}
    if "onnx" in recognizers:
        if not args.onnx_model:
            from ..errors import InvalidParameterError
            raise InvalidParameterError("--recognizer onnx needs --onnx-model PATH")
        recognizer_params["onnx"] = {"model_path": args.onnx_model,
                                     "input_size": args.onnx_input_size,
                                     "threshold": args.onnx_threshold}
    services = () if args.services.strip().lower() in ("", "none") \
        else tuple(s.strip() for s in args.services.split(",") if s.strip())
    return EvalConfig(
        dataset=args.dataset, split=args.split or default_split(args.dataset, args.data_root),
        split_source=args.split_source, limit=args.limit, parrot=not args.no_parrot,
        data_root=args.data_root, recognizers=recognizers, recognizer_params=recognizer_params,
        services=services, service_crop=args.service_crop, detector=args.detector,
        detector_params=detector_params(args), second_chance=not args.no_second_chance,
        landmarks=args.landmarks, expand=args.expand,
        feather=args.feather, mask_shape=args.mask_shape, seed=args.seed,
        cache_dir=None if args.no_cache else str(args.cache_dir or default_cache_dir()),
        gallery_per_identity=args.gallery_per_identity or None,
        fars=tuple(args.far) if args.far else DEFAULT_FARS, fid_weights=args.fid_weights,
        lpips_weights=args.lpips_weights, samples=args.samples, progress=not args.quiet)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.report import markdown_table, write_report
    from ..evaluation.runner import Evaluator

    specs = build_specs(args)
    config = build_config(args)
    restorer = None
    if args.restored:
        from ..evaluation.restoration_attack import evaluator_restorer
        restorer = evaluator_restorer(args.restorer_cache)
    if args.engine == "ray":
        from ..engines.ray_engine import RayEvaluator, ray_cluster
        with ray_cluster(args.address):  # unreachable: exit 2 before any work
            results = RayEvaluator(config, restorer=restorer,
                                   num_actors=args.num_actors).run(specs)
    else:
        results = Evaluator(config, restorer=restorer).run(specs)
    files = write_report(results, args.out)
    print(markdown_table(results))
    dataset = results["dataset"]
    print(f"\n{dataset['usable']} face(s) evaluated; {dataset['excluded_no_face']} image(s) without "
          f"a face on the original excluded; {len(dataset['unreadable'])} unreadable")
    for name, error in results["service_errors"].items():
        print(f"warning: service {name} not run: {error}", file=sys.stderr)
    failures = sum(m["failures"] for m in results["methods"])
    if failures:
        print(f"warning: {failures} image(s) failed in the methods (see {files['report']})",
              file=sys.stderr)
    print(f"report: {files['report']}\nresults: {files['results']}")
    return 0
