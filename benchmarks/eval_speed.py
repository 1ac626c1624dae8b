"""How long ``facedeid evaluate`` takes on 1,200 faces (issue 13 target: 300 s cold, 2 cores).

Runs one method (mosaic) on the 1,200 identity-disjoint test images of ``celeba-id200`` with
every default metric: attackers dlib and faceres (identity distance, SDR, rank-1 with the own
original and with other photos of the person, TAR at FAR, the parrot attack), the four
services (expression, attributes, detection, age_gender) and image quality. Twice: with an
empty cache (cold: originals embedded, services asked) and again with the cache the first run
filled (warm: the usual case when comparing methods). Prints the stage timings of each run and
the load average before and after (a run on a busy machine says so).

Usage::

    python benchmarks/eval_speed.py [--limit 1200] [--method mosaic]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=1200)
    parser.add_argument("--method", default="mosaic")
    parser.add_argument("--services", default="expression,attributes,detection,age_gender")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args()

    from facedeid.evaluation.runner import EvalConfig, Evaluator, MethodSpec

    rows = []
    with tempfile.TemporaryDirectory(prefix="facedeid-speed-") as cache:
        for run in ("cold", "warm"):
            config = EvalConfig(dataset="celeba-id200", split="test", limit=args.limit,
                                data_root=args.data_root, cache_dir=cache, progress=False,
                                services=tuple(s for s in args.services.split(",") if s))
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            evaluator = Evaluator(config)
            results = evaluator.run([MethodSpec.parse(args.method)])
            for recognizer in evaluator.recognizers:  # reap dlib's workers: their CPU counts
                getattr(recognizer, "close", lambda: None)()
            wall = time.perf_counter() - started
            times = os.times()
            t, row = results["timings"], results["methods"][0]
            line = {"run": run, "faces": results["dataset"]["usable"],
                    "gallery": results["linking_gallery"]["size"], "wall_s": round(wall, 1),
                    "cpu_s_so_far_incl_workers": round(sum(times[:4]), 1),
                    "detect_originals_s": round(t["detect_originals_s"], 1),
                    "embed_originals_s": round(t["embed_originals_s"], 1),
                    "services_on_originals_s": round(t["services_on_originals_s"], 1),
                    "method_and_metrics_s": round(row["seconds"], 1),
                    "method_steps_s": {k: round(v, 1) for k, v in row["timings"].items()},
                    "cache_hits": results["cache"]["hits"],
                    "service_errors": results["service_errors"] or None,
                    "load_before": round(load_before, 2),
                    "load_after": round(os.getloadavg()[0], 2)}
            rows.append(line)
            print(json.dumps(line), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
