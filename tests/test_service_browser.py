"""The service's page in a real headless browser: Debian's chromium driven by Playwright.

Nothing downloads a browser: Playwright is pointed at /usr/bin/chromium (``.ci/run`` installs
the Debian package). A real uvicorn server runs on a free loopback port in a thread. The test
uploads a CelebA photo, chooses blur, checks that the result differs from the original where
the face is (and not far from it), and downloads the result.
"""
from __future__ import annotations

import base64
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import shared_path

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not CHROMIUM.is_file(),
                       reason=f"needs Debian's chromium at {CHROMIUM} (.ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """A uvicorn server with the service on 127.0.0.1, stopped after the module."""
    import uvicorn

    from facedeid.service import ServiceSettings, create_app

    root = tmp_path_factory.mktemp("service-browser")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceSettings(temp_root=root)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the uvicorn server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox"])
        yield launched
        launched.close()


def test_page_anonymizes_a_celeba_photo_with_blur_and_downloads_it(server_url, browser, tmp_path):
    photo = sorted(shared_path("celeba-id200", "img_align_celeba").glob("*.jpg"))[0]
    original = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    context = browser.new_context(accept_downloads=True, viewport={"width": 390, "height": 844})
    page = context.new_page()  # a phone-width screen
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server_url + "/")
    page.wait_for_selector("#method option[value=blur]", state="attached")
    page.set_input_files("#file", str(photo))
    page.select_option("#method", "blur")
    assert page.locator("#param-kernel_size").count() == 1  # the form follows GET /methods
    page.click("#run")
    page.wait_for_selector("#download:not([hidden])", timeout=60_000)
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    assert int(page.locator("#faces").text_content()) >= 1
    assert page.locator("#elapsed").text_content().endswith("s)")
    assert page.locator("#compare-box").is_visible() and page.locator("#slider").is_visible()

    shown = page.evaluate("""async () => {
        const blob = await (await fetch(document.getElementById('result-image').src)).blob();
        const bytes = new Uint8Array(await blob.arrayBuffer());
        let text = ''; for (const b of bytes) text += String.fromCharCode(b);
        return btoa(text);
    }""")
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown))).convert("RGB")).astype(int)
    assert result.shape == original.shape
    # img_align_celeba centres the face: eyes near y 110, mouth near y 150, x 60..120
    face = np.abs(result[95:160, 60:120] - original[95:160, 60:120]).mean()
    corner = np.abs(result[:20, :20] - original[:20, :20]).mean()
    assert face > 5 and face > 3 * corner, (face, corner)

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename == f"{photo.stem}-anonymized.jpg"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes() == base64.b64decode(shown)
    assert not errors, errors
    context.close()
