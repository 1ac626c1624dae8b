"""The web service (``facedeid serve``): API behaviour and every bad input of issue 17.

The app runs in-process under Starlette's TestClient (httpx); a real uvicorn server and
browser are in ``test_service_browser.py``. Images are small and methods cheap (blur, mosaic)
so the file runs in seconds; the models load once per module (one app per settings).
"""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import warnings
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():  # starlette asks for httpx2; httpx is what is installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from facedeid.methods import available_methods
from facedeid.service import ServiceSettings, create_app
from facedeid.service.app import RESULT_HEADER

from .conftest import shared_path

TOKEN = "test-token-123"


# -- helpers -----------------------------------------------------------------------------------
def jpeg_bytes(image: np.ndarray, exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=92, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def tiny_video(frames: int = 10, size: int = 160) -> bytes:
    """An H.264 MP4 of the astronaut's face sliding sideways (PyAV, in memory)."""
    import cv2
    from skimage import data

    face = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(face, index, axis=1)),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def count_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def leftovers(root: Path) -> list[Path]:
    """Files and folders left in the service's temporary root."""
    return sorted(root.rglob("*"))


def wait_until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def service(tmp_root: Path, **settings) -> TestClient:
    tmp_root.mkdir(parents=True, exist_ok=True)
    return TestClient(create_app(ServiceSettings(temp_root=tmp_root, **settings)))


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    """A 256x256 portrait (the astronaut, scaled): one face, fast to process."""
    import cv2
    from skimage import data
    return cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def temp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service-temp")


@pytest.fixture(scope="module")
def client(temp_root):
    with service(temp_root, max_upload_bytes=2 * 1024 * 1024, max_files=4) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def _no_leftovers(request):
    """Every test using the shared client leaves the temporary root empty (once the worker
    has let go of its files)."""
    yield
    if "client" in request.fixturenames:
        root = request.getfixturevalue("temp_root")
        assert wait_until(lambda: not leftovers(root)), leftovers(root)


# -- the API -----------------------------------------------------------------------------------
def test_healthz_and_methods_come_from_the_param_declarations(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["token_required"] is False
    listed = {entry["name"]: entry for entry in client.get("/methods").json()}
    assert set(listed) == set(available_methods())
    for name, cls in available_methods().items():
        params = listed[name]["params"]
        assert [p["name"] for p in params] == [p.name for p in cls.params]
        for entry, param in zip(params, cls.params):
            assert entry["help"] == param.help
            assert entry["minimum"] == param.minimum and entry["maximum"] == param.maximum
            assert entry["safe_range"] == param.safe_range()
    block = next(p for p in listed["mosaic"]["params"] if p["name"] == "block_size")
    assert block["type"] == "integer" and block["safe_minimum"] is not None


def test_anonymize_image_changes_the_face_strips_gps_and_reports_faces(client, portrait):
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}  # GPS latitude
    response = client.post("/anonymize", files={"file": ("me.jpg", jpeg_bytes(portrait, exif),
                                                         "image/jpeg")},
                           data={"method": "blur", "params": json.dumps({"kernel_size": 31})})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert 'filename="me-anonymized.jpg"' in response.headers["content-disposition"]
    summary = json.loads(response.headers[RESULT_HEADER])
    assert summary["faces"] == 1 and summary["status"] == "anonymized"
    assert summary["method"] == "blur" and summary["params"] == {"kernel_size": 31}
    result = Image.open(io.BytesIO(response.content))
    assert len(result.getexif()) == 0  # no EXIF, no GPS
    x0, y0, x1, y1 = (int(v) for v in summary["face_boxes"][0]["box"])
    output = np.asarray(result.convert("RGB")).astype(int)
    inside = np.abs(output[y0:y1, x0:x1] - portrait[y0:y1, x0:x1]).mean()
    corner = np.abs(output[:40, :40] - portrait[:40, :40]).mean()
    assert inside > 8 > corner  # the face changed; far from it only JPEG noise


def test_content_decides_not_the_name_or_declared_type(client, portrait):
    sneaky = ("../../etc/passwd.jpg", png_bytes(portrait), "text/plain")
    response = client.post("/anonymize", files={"file": sneaky},
                           data={"method": "mosaic"})
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\x89PNG")  # a PNG comes back as a PNG
    disposition = response.headers["content-disposition"]
    assert "/" not in disposition and 'filename="passwd-anonymized.png"' in disposition


def test_anonymizers_are_built_once_per_worker_and_reused(client, portrait):
    pool = client.app.state.pool
    for _ in range(2):
        assert client.post("/anonymize", files={"file": ("a.jpg", jpeg_bytes(portrait))},
                           data={"method": "mosaic", "params": '{"block_size": 10}'}
                           ).status_code == 200
    from facedeid.service.workers import MethodRequest
    request = MethodRequest("mosaic", (("block_size", 10),))
    first = pool.submit(pool.anonymizer, request).result()
    second = pool.submit(pool.anonymizer, request).result()
    assert first is second  # one worker: the same object both times
    other = pool.submit(pool.anonymizer, MethodRequest("blur")).result()
    assert other.locator is first.locator  # detector models shared by the worker's methods


def test_video_job_progress_result_and_delete(client, temp_root):
    video = tiny_video()
    response = client.post("/jobs", files={"file": ("clip.mp4", video, "video/mp4")},
                           data={"method": "mosaic"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert wait_until(lambda: client.get(f"/jobs/{job_id}").json()["state"]
                      not in ("queued", "running"), 60)
    state = client.get(f"/jobs/{job_id}").json()
    assert state["state"] == "done", state
    assert state["progress"]["fraction"] == 1.0 and state["results"][0]["face_tracks"] >= 1
    result = client.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    assert count_frames(result.content) == 10
    assert client.delete(f"/jobs/{job_id}").json()["deleted"] is True
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_finished_job_expires_and_its_files_go(client, portrait, temp_root):
    job_id = client.post("/jobs", files={"file": ("a.jpg", jpeg_bytes(portrait))}).json()["id"]
    assert wait_until(lambda: client.get(f"/jobs/{job_id}").json()["state"] == "done", 60)
    assert leftovers(temp_root)  # the result waits for its download
    jobs = client.app.state.jobs
    assert jobs.expire(now=time.time() + jobs.ttl_s / 2) == 0
    assert jobs.expire(now=time.time() + jobs.ttl_s + 1) == 1
    assert client.get(f"/jobs/{job_id}").status_code == 404 and not leftovers(temp_root)


def test_job_with_several_files_returns_a_zip(client, portrait):
    files = [("file", ("one.jpg", jpeg_bytes(portrait), "image/jpeg")),
             ("file", ("two.png", png_bytes(portrait[:, ::-1].copy()), "image/png"))]
    job_id = client.post("/jobs", files=files, data={"method": "blur"}).json()["id"]
    assert wait_until(lambda: client.get(f"/jobs/{job_id}").json()["state"] == "done", 60)
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job_id}/result").content))
    assert sorted(archive.namelist()) == ["001-one.jpg", "002-two.png", "results.json"]
    assert [r["faces"] for r in json.loads(archive.read("results.json"))] == [1, 1]
    client.delete(f"/jobs/{job_id}")


def test_openapi_and_docs_page_need_no_cdn(client):
    spec = client.get("/openapi.json").json()
    assert {"/anonymize", "/jobs", "/jobs/{job_id}", "/methods", "/evaluate"} <= set(spec["paths"])
    for page in ("/", "/docs"):
        html = client.get(page).text
        assert "<script" in html and "http://" not in html and "https://" not in html
    assert client.get("/static/app.js").status_code == 200


# -- bad input ---------------------------------------------------------------------------------
def _truncated_jpeg(portrait) -> bytes:
    data = jpeg_bytes(portrait)
    return data[:len(data) // 3]


@pytest.mark.parametrize("case, files, data, status, words", [
    ("zero bytes", {"file": ("empty.jpg", b"", "image/jpeg")}, {}, 400, "empty file"),
    ("text as image", {"file": ("x.jpg", b"hello, not an image" * 10, "image/jpeg")}, {}, 415,
     "not an image or video"),
    ("unknown method", "portrait", {"method": "no-such-method"}, 422, "Available"),
    ("unknown parameter", "portrait", {"method": "mosaic", "params": '{"colour": 3}'}, 422,
     "has no parameter"),
    ("out-of-range parameter", "portrait", {"method": "mosaic", "params": '{"block_size": -4}'},
     422, "block_size"),
    ("weak parameter", "portrait", {"method": "mosaic", "params": '{"block_size": 1}'}, 422,
     "allow-weak"),
    ("params not JSON", "portrait", {"params": "block_size=4"}, 422, "JSON object"),
    ("unknown field", "portrait", {"colour": "red"}, 422, "unknown form field"),
    ("bad seed", "portrait", {"seed": "abc"}, 422, "seed"),
    ("no file", None, {"method": "blur"}, 422, "no file"),
])
def test_bad_uploads_get_clear_errors(client, portrait, case, files, data, status, words):
    if files == "portrait":
        files = {"file": ("p.jpg", jpeg_bytes(portrait), "image/jpeg")}
    if files is None:  # a multipart form with text fields only
        files = {name: (None, value) for name, value in data.items()}
        data = {}
    response = client.post("/anonymize", files=files, data=data)
    assert response.status_code == status, (case, response.text)
    assert words in response.json()["detail"], response.json()
    assert client.get("/healthz").status_code == 200  # the server stays up


def test_corrupt_image_fails_cleanly_without_server_paths(client, portrait, temp_root):
    response = client.post("/anonymize", files={"file": ("broken.jpg", _truncated_jpeg(portrait),
                                                         "image/jpeg")})
    assert response.status_code in (400, 422), response.text
    detail = response.json()["detail"]
    assert "broken.jpg" in detail and str(temp_root) not in detail and "/tmp" not in detail


def test_not_multipart_is_415(client):
    response = client.post("/anonymize", json={"file": "aGVsbG8="})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    assert client.post("/anonymize", content=b"\xff\xd8\xff", headers={
        "content-type": "image/jpeg"}).status_code == 415


def test_oversize_upload_is_413_declared_or_streamed(client, temp_root):
    big = b"\xff\xd8\xff" + bytes(3 * 1024 * 1024)
    response = client.post("/anonymize", files={"file": ("big.jpg", big, "image/jpeg")})
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunked():  # no Content-Length: the cap is enforced while streaming
        yield (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
               b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(48):
            yield bytes(64 * 1024)
        yield b"\r\n--b--\r\n"

    response = client.post("/anonymize", content=chunked(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413


def test_decompression_bomb_is_refused_before_decoding(client):
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, "PNG")  # 400 megapixels, ~400 kB compressed
    response = client.post("/anonymize", files={"file": ("bomb.png", bomb.getvalue())})
    assert response.status_code == 413 and "megapixels" in response.json()["detail"]


def test_unknown_job_id_is_404(client):
    for method, path in (("GET", "/jobs/nope"), ("GET", "/jobs/nope/result"),
                         ("DELETE", "/jobs/nope")):
        response = client.request(method, path)
        assert response.status_code == 404 and "no job" in response.json()["detail"]


def test_client_disconnect_mid_upload_leaves_nothing(client, temp_root, portrait):
    """An ASGI client that sends half a body, then disconnects."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"half.jpg\"\r\n"
            b"\r\n" + jpeg_bytes(portrait))
    messages = [{"type": "http.request", "body": body[:len(body) // 2], "more_body": True},
                {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/anonymize", "raw_path": b"/anonymize", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"multipart/form-data; boundary=b"),
                                          (b"host", b"testserver")],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 400  # answered (to nobody) instead of a server error
    assert not leftovers(temp_root)
    assert client.post("/anonymize", files={"file": ("ok.jpg", jpeg_bytes(portrait))}
                       ).status_code == 200  # and the service goes on


def test_full_queue_answers_503_with_retry_after(tmp_path, portrait):
    release = threading.Event()
    with service(tmp_path / "t", workers=1, queue_size=0) as test_client:
        blocker = test_client.app.state.pool.submit(release.wait, 30)
        try:
            response = test_client.post("/anonymize",
                                        files={"file": ("a.jpg", jpeg_bytes(portrait))})
            assert response.status_code == 503 and response.headers["retry-after"]
            assert "queue" in response.json()["detail"]
            assert test_client.post("/jobs", files={"file": ("a.jpg", jpeg_bytes(portrait))}
                                    ).status_code == 503
        finally:
            release.set()
            blocker.result()
        assert test_client.post("/anonymize", files={"file": ("a.jpg", jpeg_bytes(portrait))}
                                ).status_code == 200
    assert not leftovers(tmp_path / "t")


def test_request_past_the_timeout_is_504_and_cleaned_up(tmp_path, portrait):
    release = threading.Event()
    with service(tmp_path / "t", workers=1, queue_size=2, timeout_s=0.5) as test_client:
        blocker = test_client.app.state.pool.submit(release.wait, 30)
        response = test_client.post("/anonymize", files={"file": ("a.jpg", jpeg_bytes(portrait))})
        assert response.status_code == 504 and "--timeout" in response.json()["detail"]
        release.set()
        blocker.result()
        assert wait_until(lambda: test_client.app.state.pool.accepted == 0)
        assert wait_until(lambda: not leftovers(tmp_path / "t"))


def test_token_is_required_when_set(tmp_path, portrait):
    with service(tmp_path / "t", token=TOKEN) as test_client:
        assert test_client.get("/healthz").json()["token_required"] is True
        assert test_client.get("/").status_code == 200  # the page itself asks for the token
        assert test_client.get("/methods").status_code == 401
        assert test_client.get("/methods", headers={"Authorization": "Bearer wrong-token"}
                               ).status_code == 401
        response = test_client.post("/anonymize", files={"file": ("a.jpg", jpeg_bytes(portrait))})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert test_client.get("/methods", headers={"Authorization": f"Bearer {TOKEN}"}
                               ).status_code == 200


def test_cors_is_closed_by_default(client):
    origin = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/methods", headers=origin).headers
    preflight = client.options("/anonymize", headers={**origin,
                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.shared_data
def test_evaluate_a_small_uploaded_set(tmp_path):
    folder = shared_path("celeba-id200", "img_align_celeba")
    photos = sorted(folder.glob("*.jpg"))[:3]
    with service(tmp_path / "t") as test_client:
        files = [("file", (photo.name, photo.read_bytes(), "image/jpeg")) for photo in photos]
        response = test_client.post("/evaluate", files=files, data={"method": "blur"})
        assert response.status_code == 200, response.text
        summary = response.json()
        assert summary["method"] == "blur" and summary["images"] == 3 and summary["faces"] >= 2
        dlib = summary["privacy"]["dlib"]
        assert 0.0 <= dlib["sdr"] <= 1.0 and dlib["identity_distance_mean"] > 0
        video = test_client.post("/evaluate", files={"file": ("v.mp4", tiny_video(4))})
        assert video.status_code == 415
    assert not leftovers(tmp_path / "t")


# -- the command line --------------------------------------------------------------------------
def test_serve_refuses_an_open_non_loopback_host(capsys, monkeypatch):
    from facedeid.cli import main

    monkeypatch.delenv("FACEDEID_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_serve_flags_become_settings(monkeypatch):
    from facedeid.cli import build_parser
    from facedeid.cli.serve import settings_from_args

    monkeypatch.setenv("FACEDEID_TOKEN", TOKEN)
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--workers", "2",
                                      "--max-upload-mb", "5", "--queue-size", "3"])
    settings = settings_from_args(args)
    assert settings.token == TOKEN and settings.workers == 2 and settings.capacity == 5
    assert settings.max_upload_bytes == 5 * 1024 * 1024
