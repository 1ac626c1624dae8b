"""``facedeid serve``: the web service and its page, under uvicorn."""
from __future__ import annotations

import argparse
import os
import sys

from .common import positive_int

HELP = "run the web service and browser page (FastAPI under uvicorn)"
DESCRIPTION = """\
Serve facedeid over HTTP: a page at / (drop an image or video, pick a method and its knobs,
compare before/after, download) and a JSON API for your own programs. Every request runs the
same pipeline as `facedeid anonymize`: EXIF/GPS dropped, the same decompression-bomb limit
(--max-pixels), the same parameter checks (weak settings refused unless allow_weak).

endpoints (listed at /docs, machine-readable at /openapi.json):
  GET  /healthz                 liveness, load and limits
  GET  /methods                 methods with each parameter's type, default, range, help
  POST /anonymize               one image or video -> the anonymized file; faces found as JSON
                                in the X-Facedeid-Result header
  POST /jobs                    videos / several files in the background -> {"id": ...}
  GET  /jobs/ID  /jobs/ID/result  DELETE /jobs/ID
  POST /evaluate                privacy/utility of one method on a few uploaded face photos

safety: uploads are streamed to a private temporary folder and refused beyond
--max-upload-mb (413); the content decides what a file is, never its name; temporary files
are deleted after the response (jobs: at DELETE or --job-ttl after they finished); no
cross-origin access unless --cors-origin. Beyond this machine (a --host other than
127.0.0.1/::1/localhost) a --token is required: clients then send
"Authorization: Bearer TOKEN". Put TLS in front (a reverse proxy) before using it over a
network; the token travels in clear otherwise.

load: --workers compute threads, each loading its models once; --queue-size more requests may
wait; beyond that the answer is 503 with Retry-After. A request not done within --timeout
answers 504.

examples:
  facedeid serve                                   http://127.0.0.1:8000/
  facedeid serve --workers 2 --max-upload-mb 50
  FACEDEID_TOKEN=$(openssl rand -hex 16) facedeid serve --host 0.0.0.0
  curl -F file=@photo.jpg -F method=blur -o out.jpg http://127.0.0.1:8000/anonymize
"""




def _positive_float(text: str) -> float:
    from .common import bounded_float
    value = bounded_float(0.0)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register(subparsers) -> None:
    from ..io.images import DEFAULT_MAX_PIXELS

    parser = subparsers.add_parser("serve", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: 127.0.0.1, this machine only)")
    net.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    net.add_argument("--token", default=None,
                     help="require 'Authorization: Bearer TOKEN' on every API call (default: "
                          "$FACEDEID_TOKEN; required for a non-loopback --host). Prefer the "
                          "environment variable: a command line is visible to other users")
    net.add_argument("--insecure-no-token", action="store_true",
                     help="allow a non-loopback --host without a token (anyone who can reach "
                          "the port can use the service)")
    net.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="let pages from ORIGIN (e.g. https://app.example.org) call the API; "
                          "repeatable (default: none, CORS closed)")
    load = parser.add_argument_group("load and limits")
    load.add_argument("--workers", type=positive_int, default=1,
                      help="compute threads; each loads the models once (default: 1; about one "
                           "per 2 CPU cores)")
    load.add_argument("--queue-size", type=int, default=8,
                      help="requests/jobs that may wait for a worker before new ones get 503 "
                           "(default: 8)")
    load.add_argument("--timeout", type=_positive_float, default=120.0, metavar="SECONDS",
                      help="a /anonymize or /evaluate request not done by then answers 504 "
                           "(default: 120)")
    load.add_argument("--job-timeout", type=_positive_float, default=3600.0, metavar="SECONDS",
                      help="a job stops before its next file after this long (default: 3600)")
    load.add_argument("--job-ttl", type=_positive_float, default=3600.0, metavar="SECONDS",
                      help="a finished job's result is deleted this long after (default: 3600)")
    load.add_argument("--max-upload-mb", type=_positive_float, default=200.0,
                      help="largest request body; beyond it 413 (default: 200)")
    load.add_argument("--max-jobs", type=positive_int, default=64,
                      help="jobs kept at once (waiting, running or finished and not yet "
                           "deleted); beyond it POST /jobs answers 503 (default: 64)")
    load.add_argument("--max-files", type=positive_int, default=32,
                      help="files in one /jobs or /evaluate request (default: 32)")
    load.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                      help=f"refuse larger images and video frames, before decoding "
                           f"(default: {DEFAULT_MAX_PIXELS:,}, as `facedeid anonymize`)")
    load.add_argument("--max-video-frames", type=positive_int, default=18_000,
                      help="refuse longer videos (default: 18000, 10 minutes at 30 fps)")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default: info)")
    parser.set_defaults(handler=run)


def settings_from_args(args: argparse.Namespace):
    """The :class:`~facedeid.service.ServiceSettings` the flags describe; refuses an open
    non-loopback service."""
    from ..errors import InvalidParameterError
    from ..service import ServiceSettings, is_loopback

    token = args.token or os.environ.get("FACEDEID_TOKEN") or None
    if not is_loopback(args.host) and token is None and not args.insecure_no_token:
        raise InvalidParameterError(
            f"--host {args.host} makes the service reachable from other machines; give a token "
            "(FACEDEID_TOKEN=... or --token) so only your clients can use it, or "
            "--insecure-no-token if the network itself is trusted")
    if args.queue_size < 0:
        raise InvalidParameterError("--queue-size must be >= 0")
    if not 0 < args.port < 65536:
        raise InvalidParameterError(f"--port must be 1..65535, got {args.port}")
    try:
        return ServiceSettings(
            workers=args.workers, queue_size=args.queue_size,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), timeout_s=args.timeout,
            job_timeout_s=args.job_timeout, job_ttl_s=args.job_ttl, max_jobs=args.max_jobs,
            max_files=args.max_files,
            max_pixels=args.max_pixels, max_video_frames=args.max_video_frames, token=token,
            cors_origins=tuple(args.cors_origin))
    except ValueError as error:
        raise InvalidParameterError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..service import create_app

    settings = settings_from_args(args)
    app = create_app(settings)
    where = f"[{args.host}]" if ":" in args.host else args.host
    print(f"facedeid: serving on http://{where}:{args.port}/ ({settings.workers} worker(s), "
          f"queue {settings.queue_size}, uploads up to {args.max_upload_mb:g} MB"
          + (", token required" if settings.token else "") + ")", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0
