"""How long ``facedeid evaluate`` takes on 1,200 faces (target: under 5 minutes on 2 cores).

Runs one method (mosaic) on the 1,200 test images of ``celeba-id200`` with every metric: dlib
privacy (identity distance, SDR, rank-1 own and linking with 10 gallery photos per person,
TAR at FAR), the service evaluators and image quality. Twice: with an empty embedding cache
(cold: originals and gallery are embedded) and again with the cache filled by the first run
(warm: the usual case when comparing methods). Prints the stage timings of each run.

Usage::

    python benchmarks/eval_speed.py [--limit 1200] [--services expression,attributes,detection]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=1200)
    parser.add_argument("--method", default="mosaic")
    parser.add_argument("--services", default="expression,attributes,detection")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(2)
    from facedeid.evaluation.runner import EvalConfig, Evaluator, MethodSpec

    with tempfile.TemporaryDirectory(prefix="facedeid-speed-") as cache:
        for run in ("cold", "warm"):
            config = EvalConfig(dataset="celeba-id200", split="test", limit=args.limit,
                                data_root=args.data_root, cache_dir=cache, progress=False,
                                services=tuple(s for s in args.services.split(",") if s))
            started = time.perf_counter()
            cpu_started = os.times()
            results = Evaluator(config).run([MethodSpec.parse(args.method)])
            wall = time.perf_counter() - started
            cpu = sum(os.times()[:2]) - sum(cpu_started[:2])
            t = results["timings"]
            row = results["methods"][0]
            print(f"{run}: {results['dataset']['usable']} faces (+{results['linking_gallery']['size']}"
                  f" gallery), wall {wall:.1f} s, process CPU {cpu:.1f} s; detect originals "
                  f"{t['detect_originals_s']:.1f} s, embed originals+gallery "
                  f"{t['embed_originals_and_gallery_s']:.1f} s, services on originals "
                  f"{t['services_on_originals_s']:.1f} s, method+metrics {row['seconds']:.1f} s; "
                  f"cache hits {results['cache']['hits']}, service errors "
                  f"{results['service_errors'] or 'none'}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
