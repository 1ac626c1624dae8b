"""The FastAPI application of ``facedeid serve``: :func:`create_app` builds it from
:class:`~facedeid.service.settings.ServiceSettings`.

Endpoints (the page at ``/`` uses the same ones; ``/docs`` lists them from ``/openapi.json``):

``GET /healthz``, ``GET /methods``, ``POST /anonymize`` (one image or video, the result file
back with the faces found as JSON in the ``X-Facedeid-Result`` header), ``POST /jobs`` /
``GET /jobs/{id}`` / ``GET /jobs/{id}/result`` / ``DELETE /jobs/{id}`` (videos and sets of
files in the background), ``POST /evaluate`` (privacy and utility of one method on a few
uploaded photos).

The request handlers only stream, check and hand over: every pixel is processed on a worker
thread (:mod:`facedeid.service.workers`) by the CLI's own functions
(:mod:`facedeid.service.processing`).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import mimetypes
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..errors import InvalidParameterError, UnknownNameError
from ..methods.catalog import method_catalog
from .jobs import DONE, JobStore
from .processing import ProcessingFailed, anonymize_upload, evaluate_uploads
from .settings import ServiceSettings
from .uploads import (ReceivedForm, ServiceError, UploadedFile, identify, new_workspace,
                      receive_form, remove_workspace, scrub_paths)
from .workers import MethodRequest, ServiceBusy, WorkerPool

log = logging.getLogger(__name__)


def _installed_version() -> str:
    """The package's version (read from its metadata: importing ``facedeid`` itself here
    would point a layer up)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("facedeid")
    except PackageNotFoundError:
        return "unknown"

RESULT_HEADER = "X-Facedeid-Result"
#: Form fields a request may carry besides its files.
METHOD_FIELDS = ("method", "params", "seed", "allow_weak", "no_face")
#: Seconds a client is told to wait after a 503.
RETRY_AFTER_S = 5
EXPIRY_INTERVAL_S = 30.0
STATIC = Path(__file__).resolve().parent / "static"
#: Error answers every upload endpoint may give (documented in /openapi.json).
ERROR_RESPONSES = {
    400: {"description": "empty, corrupt or malformed upload"},
    401: {"description": "token required (the service runs with --token)"},
    413: {"description": "upload, image or video above the service's limits"},
    415: {"description": "not multipart/form-data, or content that is no image/video"},
    422: {"description": "unknown method, parameter or field; refused (weak) parameter; a "
                         "file the pipeline failed on"},
    503: {"description": "workers busy and queue full; retry after Retry-After seconds"},
    504: {"description": "not finished within --timeout"},
}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Everything the page needs is served here: no CDN, no inline script.
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; "
                                 b"media-src 'self' blob:; connect-src 'self' blob:; "
                                 b"object-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
]


def _multipart_body(description: str, many: bool) -> dict:
    """The OpenAPI description of a multipart body this app parses itself (streamed)."""
    file_schema = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "description": description, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "array", "items": file_schema} if many else file_schema,
            "method": {"type": "string", "default": "mosaic",
                       "description": "a name from GET /methods"},
            "params": {"type": "string", "default": "{}",
                       "description": 'JSON object of method parameters, e.g. {"block_size": 12}'},
            "seed": {"type": "integer", "description": "seed for stochastic methods"},
            "allow_weak": {"type": "boolean", "default": False,
                           "description": "accept parameters outside their safe range"},
            "no_face": {"type": "string", "enum": ["keep", "obfuscate"], "default": "keep",
                        "description": "an image without a detected face: keep it (metadata "
                                       "still stripped) or pixelate all of it"}}}}}}}


class _SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response (pure ASGI: it does
    not buffer bodies or hide client disconnects from the handlers)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = dict(message, headers=list(message.get("headers", [])) + [
                    header for header in SECURITY_HEADERS if header[0] not in present])
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Workspace:
    """The private folder of one request, deleted when nothing needs it any more: after the
    response was sent, or after the worker let go of it (a timed-out item finishes first)."""

    def __init__(self, root: Path | None) -> None:
        self.path = new_workspace(root)
        self.worker: Future | None = None
        self.handed_to_response = False

    def release(self) -> None:
        if self.handed_to_response:
            return
        if self.worker is not None:  # runs at once if the worker is done already
            self.worker.add_done_callback(lambda _future: remove_workspace(self.path))
        else:
            remove_workspace(self.path)


def parse_method_request(fields: dict[str, str]) -> MethodRequest:
    """The form's method fields as a :class:`MethodRequest`; 422 on anything malformed."""
    unknown = sorted(set(fields) - set(METHOD_FIELDS))
    if unknown:
        raise ServiceError(422, f"unknown form field(s) {unknown}; expected the file(s) in "
                                f"'file' and optionally {', '.join(METHOD_FIELDS)}")
    not_an_object = "'params' must be a JSON object, e.g. {\"block_size\": 12}"
    try:
        params = json.loads(fields.get("params") or "{}")
    except ValueError:
        raise ServiceError(422, not_an_object) from None
    if not isinstance(params, dict):
        raise ServiceError(422, not_an_object)
    seed_text = (fields.get("seed") or "").strip()
    try:
        seed = int(seed_text) if seed_text else None
    except ValueError:
        raise ServiceError(422, f"'seed' must be an integer, got {seed_text!r}") from None
    allow_weak = (fields.get("allow_weak") or "false").strip().lower()
    if allow_weak not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
        raise ServiceError(422, f"'allow_weak' must be true or false, got {allow_weak!r}")
    no_face = (fields.get("no_face") or "keep").strip()
    if no_face not in ("keep", "obfuscate"):
        raise ServiceError(422, f"'no_face' must be keep or obfuscate, got {no_face!r}")
    frozen = tuple(sorted((str(key), tuple(value) if isinstance(value, list) else value)
                          for key, value in params.items()))
    return MethodRequest((fields.get("method") or "mosaic").strip(), frozen, seed,
                         allow_weak in ("true", "1", "on", "yes"), no_face)


def _check_method(request: MethodRequest) -> None:
    """Build the method once to validate name and parameters (the same checks the CLI runs)."""
    from ..methods import create_method
    create_method(request.method, allow_weak=request.allow_weak, **dict(request.params))


async def _validated_request(form: ReceivedForm) -> MethodRequest:
    request = parse_method_request(form.fields)
    try:
        await run_in_threadpool(_check_method, request)
    except (UnknownNameError, InvalidParameterError) as error:
        raise ServiceError(422, str(error)) from None
    return request


def _result_header(summary: dict[str, Any]) -> str:
    """The summary as one header value (ASCII JSON; bounded by the listed-faces cap)."""
    return json.dumps(summary, ensure_ascii=True, separators=(",", ":"), default=str)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the service. Models load lazily, once per worker thread, on first use."""
    settings = settings or ServiceSettings()
    pool = WorkerPool(settings.workers, settings.capacity)
    jobs = JobStore(pool, max_jobs=settings.max_jobs, ttl_s=settings.job_ttl_s,
                    timeout_s=settings.job_timeout_s, max_pixels=settings.max_pixels,
                    max_video_frames=settings.max_video_frames)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        async def expire_jobs() -> None:
            while True:
                await asyncio.sleep(EXPIRY_INTERVAL_S)
                jobs.expire()

        expiry = asyncio.create_task(expire_jobs())
        try:
            yield
        finally:
            expiry.cancel()
            jobs.close()
            pool.shutdown()

    # Swagger UI and ReDoc load their scripts from a CDN: /docs is our own page instead.
    version = _installed_version()
    app = FastAPI(title="facedeid", version=version, lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="De-identify faces in images and videos. Every request runs the "
                              "same pipeline as the `facedeid` command line.")
    app.state.settings, app.state.pool, app.state.jobs = settings, pool, jobs
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization"], expose_headers=[RESULT_HEADER])
    app.add_middleware(_SecurityHeaders)

    async def require_token(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 settings.token.encode()):
            raise ServiceError(401, "this service needs 'Authorization: Bearer <token>' "
                                    "(the --token it was started with)",
                               headers={"WWW-Authenticate": "Bearer"})

    api = [Depends(require_token)]

    @app.exception_handler(ServiceBusy)
    async def busy(_request: Request, error: ServiceBusy) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    async def receive(request: Request, workspace: _Workspace, max_files: int) -> ReceivedForm:
        pool.refuse_if_full()  # before reading a byte of a possibly large upload
        try:
            return await receive_form(request, workspace.path, max_bytes=settings.max_upload_bytes,
                                      max_files=max_files)
        except ClientDisconnect:
            # Nobody reads this answer; it ends the request without a traceback in the log.
            log.info("client disconnected during the upload; its partial files are removed")
            raise ServiceError(400, "the client disconnected before the upload was complete") \
                from None

    async def identified(form: ReceivedForm, kinds: tuple[str, ...]) -> list[UploadedFile]:
        if not form.files:
            raise ServiceError(422, "no file: send it in the multipart field 'file'")
        uploads = []
        for upload in form.files:
            upload = await run_in_threadpool(identify, upload, settings.max_pixels,
                                             settings.max_video_frames)
            if upload.kind not in kinds:
                raise ServiceError(415, f"{upload.client_name}: a {upload.kind} cannot be used "
                                        f"here (expected: {' or '.join(kinds)})")
            uploads.append(upload)
        return uploads

    async def on_worker(workspace: _Workspace, timeout: float, function, *args):
        workspace.worker = pool.submit(function, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(workspace.worker), timeout)
        except asyncio.TimeoutError:
            raise ServiceError(504, f"not finished within {timeout:g} s (--timeout); try a "
                                    "smaller file or POST /jobs") from None

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/healthz", summary="Liveness and load")
    async def healthz() -> dict:
        return {"status": "ok", "version": version, "workers": settings.workers,
                "accepted": pool.accepted, "capacity": settings.capacity, "jobs": len(jobs),
                "token_required": settings.token is not None,
                "max_upload_bytes": settings.max_upload_bytes}

    @app.get("/methods", summary="Methods and their parameters", dependencies=api)
    async def methods() -> list[dict]:
        """Every registered method with each parameter's type, default, range (hard and safe)
        and help, from the declarations the CLI uses."""
        return method_catalog()

    @app.post("/anonymize", summary="De-identify one image or video", dependencies=api,
              openapi_extra=_multipart_body("one image or video in 'file'", many=False),
              responses={200: {"description": f"the result file; the {RESULT_HEADER} header "
                                              "holds the faces found as JSON"},
                         **ERROR_RESPONSES})
    async def anonymize(request: Request):
        workspace = _Workspace(settings.temp_root)
        try:
            form = await receive(request, workspace, max_files=1)
            method = await _validated_request(form)
            (upload,) = await identified(form, ("image", "video"))
            try:
                result = await on_worker(workspace, settings.timeout_s, lambda: anonymize_upload(
                    pool, upload, method, max_pixels=settings.max_pixels,
                    max_video_frames=settings.max_video_frames))
            except ProcessingFailed as error:
                raise ServiceError(422, scrub_paths(error, [upload], workspace.path)) from None
            if result.path is None:
                raise ServiceError(422, "no output was written")
            name = f"{Path(upload.client_name).stem[:60] or 'upload'}-anonymized{upload.suffix}"
            response = FileResponse(
                result.path, media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
                filename=name, headers={RESULT_HEADER: _result_header(result.summary),
                                        "Cache-Control": "no-store"},
                background=BackgroundTask(remove_workspace, workspace.path))
            workspace.handed_to_response = True
            return response
        finally:
            workspace.release()

    @app.post("/jobs", summary="Start a background job (videos, several files)", status_code=202,
              dependencies=api, responses=ERROR_RESPONSES,
              openapi_extra=_multipart_body("one or more images/videos in 'file'", many=True))
    async def start_job(request: Request) -> dict:
        workspace = _Workspace(settings.temp_root)
        try:
            form = await receive(request, workspace, max_files=settings.max_files)
            method = await _validated_request(form)
            uploads = await identified(form, ("image", "video"))
            job = jobs.start(workspace.path, uploads, method)
            workspace.handed_to_response = True  # the job owns the folder now
            return job.to_dict()
        finally:
            workspace.release()

    def find_job(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise ServiceError(404, f"no job {job_id!r} (never created, deleted, or expired "
                                    f"{settings.job_ttl_s:g} s after it finished)")
        return job

    @app.get("/jobs/{job_id}", summary="Job state and progress", dependencies=api)
    async def job_state(job_id: str) -> dict:
        return find_job(job_id).to_dict()

    @app.get("/jobs/{job_id}/result", summary="Download a finished job's result",
             dependencies=api)
    async def job_result(job_id: str) -> FileResponse:
        job = find_job(job_id)
        if job.state != DONE or job.result_path is None or not job.result_path.is_file():
            raise ServiceError(409, f"job {job_id} is {job.state}; its result exists once it is "
                                    "done" + (f" ({job.error})" if job.error else ""))
        upload = job.uploads[0]
        name = "results.zip" if job.result_path.suffix == ".zip" else \
            f"{Path(upload.client_name).stem[:60] or 'upload'}-anonymized{upload.suffix}"
        return FileResponse(job.result_path, filename=name,
                            media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
                            headers={RESULT_HEADER: _result_header({"results": [
                                {key: result.get(key) for key in
                                 ("file", "status", "faces", "face_tracks", "error")}
                                for result in job.results]}),
                                     "Cache-Control": "no-store"})

    @app.delete("/jobs/{job_id}", summary="Cancel a job or delete its result", dependencies=api)
    async def delete_job(job_id: str) -> dict:
        job = jobs.delete(job_id)
        if job is None:
            find_job(job_id)
        return {"id": job_id, "deleted": True, "state": job.state}

    @app.post("/evaluate", summary="Privacy and utility of one method on a few photos",
              dependencies=api, responses=ERROR_RESPONSES,
              openapi_extra=_multipart_body(
                  "2 or more face photos in 'file' (at most --max-files)", many=True))
    async def evaluate(request: Request) -> dict:
        workspace = _Workspace(settings.temp_root)
        try:
            form = await receive(request, workspace, max_files=settings.max_files)
            method = await _validated_request(form)
            uploads = await identified(form, ("image",))
            try:
                return await on_worker(workspace, settings.timeout_s, lambda: evaluate_uploads(
                    pool, workspace.path, method, settings.evaluate_recognizers,
                    settings.evaluate_services))
            except Exception as error:
                if isinstance(error, ServiceError):
                    raise
                from ..errors import FaceDeidError
                if isinstance(error, FaceDeidError):
                    raise ServiceError(422, scrub_paths(error, uploads, workspace.path)) from None
                raise
        finally:
            workspace.release()

    return app


__all__ = ["create_app", "parse_method_request", "RESULT_HEADER"]
