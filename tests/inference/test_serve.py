"""Serve: the JSON API and its limits (TestClient), and the page in a real headless Chromium."""

import io
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import HOTDOG_MINI, make_folder, make_image, run_reports_off
from PIL import Image

from transferlab import __version__
from transferlab.cli.commands import main
from transferlab.config import make_config
from transferlab.inference import serve as S
from transferlab.inference.predictor import load
from transferlab.inference.serve import create_app, headline, is_hotdog_model, make_server
from transferlab.workflows.finetuning import finetune

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOTDOG = {"hotdog": (200, 60, 40), "not_hotdog": (40, 160, 60)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model whose classes are hotdog / not_hotdog (trained on colors: fast, not smart)."""
    root = tmp_path_factory.mktemp("serve")
    data = make_folder(root / "data", {"train": 8, "val": 2}, classes=HOTDOG)
    with run_reports_off():  # the server reads the model, not its report
        finetune(make_config(data=str(data), model="mobilenet_v2", image_size=64, batch_size=8, epochs=1,
                             out=str(root / "run")), quiet=True)
    return root / "run", data


@pytest.fixture(scope="module")
def client(run):
    return TestClient(create_app(run[0], max_upload_mb=1, max_pixels=250_000, device="cpu"))


def png_bytes(size=(120, 90), color=(200, 60, 40), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response, status, needle):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and needle in body["error"], body
    assert not any(c in body["error"] for c in "\x1e\x1f"), body  # option markers are spelled out


def test_headline_for_hot_dog_models_and_others():
    for classes in (["hotdog", "not-hotdog"], ["Hot_Dog", "not_hot_dog"], ["not hotdog", "hot dog"]):
        assert is_hotdog_model(classes)
        assert headline(classes[0], classes) == ("Hot dog!" if "not" not in classes[0].lower() else "Not hot dog!")
        assert headline(classes[1], classes) == ("Not hot dog!" if "not" in classes[1].lower() else "Hot dog!")
    for classes in (["cat", "dog"], ["hotdog", "pizza"], ["hotdog", "not_hotdog", "pizza"]):
        assert not is_hotdog_model(classes) and headline(classes[0], classes) == classes[0]


def test_health_info_and_page(client, run):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["class_names"] == ["hotdog", "not_hotdog"] and info["model"] == "mobilenet_v2"
    assert info["transferlab_version"] == __version__ and info["hotdog"] is True and info["stage"] == "final"
    assert info["preprocessing"]["crop_size"] == 64 and info["limits"] == {"max_upload_mb": 1, "max_pixels": 250_000}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for element in ('id="file"', 'id="preview"', 'id="headline"', 'id="bars"'):
        assert element in page.text
    assert 'id="label"' not in page.text  # the headline says the class; no second line repeats it
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: no CDN


def test_predict_answers_like_the_python_api(client, run):
    run_dir, data = run
    path = data / "val" / "not_hotdog" / "not_hotdog_0.png"
    response = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = load(run_dir, device="cpu").predict([path])[0]
    assert body["label"] == expected["label"]
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert body["headline"] == ("Hot dog!" if body["label"] == "hotdog" else "Not hot dog!")
    rgba = io.BytesIO()
    Image.new("RGBA", (50, 40), (0, 0, 0, 0)).save(rgba, format="PNG")
    assert client.post("/predict", files={"file": ("t.png", rgba.getvalue())}).status_code == 200


def test_every_error_is_json(client):
    limit, too_big = 1024 * 1024, "larger than 1 MB (--max-upload-mb)"
    oversize = b"\xff\xd8" + b"\0" * (limit + 256 * 1024)  # beyond the body limit: refused on Content-Length
    assert_error(client.post("/predict", files={"file": ("big.jpg", oversize)}), 413, too_big)
    just_over = png_bytes() + b"\0" * (limit + 10 - len(png_bytes()))  # body within slack, file itself too big
    assert_error(client.post("/predict", files={"file": ("big.png", just_over)}), 413, too_big)

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n\r\n"
        for _ in range(20):
            yield b"\0" * 100_000
        yield b"\r\n--b--\r\n"

    streamed = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(streamed, 413, too_big)

    assert_error(client.post("/predict", files={"file": ("a.jpg", b"plain text, no image")}), 415, "not an image")
    noise = Image.effect_noise((200, 200), 60).convert("RGB")
    png, jpeg = io.BytesIO(), io.BytesIO()
    noise.save(png, format="PNG")
    noise.save(jpeg, format="JPEG")
    for broken in (png.getvalue()[: len(png.getvalue()) // 2], jpeg.getvalue()[:2000]):
        assert_error(client.post("/predict", files={"file": ("t.img", broken)}), 400, "truncated or damaged")
    assert_error(client.post("/predict", files={"file": ("wide.png", png_bytes(size=(600, 500)))}), 413,
                 "600x500 = 300000 pixels is over the limit of 250000")
    assert_error(client.post("/predict", files={"file": ("e.png", b"")}), 400, "empty")
    missing = "missing multipart field 'file'"
    assert_error(client.post("/predict", files={"image": ("a.png", png_bytes())}), 400, missing)
    as_text = client.post("/predict", data={"file": "a string, not a file"}, files={"other": ("a.png", b"x")})
    assert_error(as_text, 400, missing)
    assert_error(client.post("/predict", content=png_bytes(), headers={"content-type": "image/png"}), 400,
                 "multipart/form-data")
    assert_error(client.get("/predict"), 405, "Method Not Allowed")
    assert_error(client.put("/health"), 405, "Method Not Allowed")
    assert_error(client.get("/nothing-here"), 404, "Not Found")


def test_a_file_that_is_no_image_is_refused_in_a_user_s_words(client):
    for name, content in (("notes.jpg", b"plain text, no image"), ("photo.heic", b"\0\0\0\x18ftypheic" + b"\0" * 64)):
        response = client.post("/predict", files={"file": (name, content)})
        assert_error(response, 415, "this file is not an image we can read (JPEG, PNG, WebP, GIF, BMP, TIFF, ...)")
        assert "Pillow" not in response.text and "extension" not in response.text


def test_default_pixel_limit_refuses_a_compressed_bomb(run):
    bomb = png_bytes(size=(10_000, 9_000), mode="1")  # 90 Mpx that compress to a few kB
    assert len(bomb) < 100_000
    response = TestClient(create_app(run[0], device="cpu")).post("/predict", files={"file": ("b.png", bomb)})
    assert_error(response, 413, "over the limit of 89478485")


def test_serve_cli_errors_are_one_line(run, tmp_path, capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        cases = [([str(tmp_path), "--port", "0"], "no trained model"),
                 ([str(run[0]), "--port", str(port)], f"--port {port}: cannot listen"),
                 ([str(run[0]), "--port", "0", "--max-upload-mb", "0"], "--max-upload-mb must be a positive number"),
                 ([str(run[0]), "--port", "70000"], "--port 70000")]
        for args, needle in cases:
            assert main(["serve", *args]) == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("transferlab: error: ") and needle in lines[0], lines
    finally:
        busy.close()


# --------------------------------------------------------------------------- the page in a browser


def _browser_or_skip():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        message = (f"WARNING: BROWSER TEST NOT RUN: {' and '.join(missing)} missing; run `make browser` "
                   "(apt-get install chromium chromium-driver)")
        warnings.warn(message, stacklevel=2)
        pytest.skip(message)


def _start_server(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = make_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, sock


@pytest.mark.slow  # a real browser
def test_page_in_headless_chromium(run, tmp_path):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photos = sorted((HOTDOG_MINI / "val" / "hotdog").glob("*.jpg"))[:1]
    photo = photos[0] if photos else make_image(tmp_path / "photo.jpg", (200, 60, 40), size=(224, 168))
    upload = tmp_path / "upload" / photo.name  # a path without spaces or links, for the file input
    upload.parent.mkdir()
    shutil.copyfile(photo, upload)
    not_an_image = tmp_path / "upload" / "notes.jpg"
    not_an_image.write_text("plain text, no image")
    expected = load(run[0], device="cpu").predict([upload])[0]

    server, thread, sock = _start_server(create_app(run[0], device="cpu"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        WebDriverWait(driver, 30).until(lambda d: "mobilenet_v2" in d.find_element(By.ID, "model").text)
        assert driver.find_element(By.ID, "title").text == "Hot dog or not hot dog?"
        preview = driver.find_element(By.ID, "preview")

        def upload_and_wait(path: Path, state: str) -> None:
            driver.find_element(By.ID, "file").send_keys(str(path))
            WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.ID, "result").get_attribute("data-state") == state)

        upload_and_wait(upload, "done")
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.find_element(By.ID, "headline").text == (
            "Hot dog!" if expected["label"] == "hotdog" else "Not hot dog!")
        assert not driver.find_elements(By.ID, "label")  # the class is not repeated under the headline
        bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert sorted(b.get_attribute("data-class") for b in bars) == ["hotdog", "not_hotdog"]
        top = bars[0]
        assert top.get_attribute("data-class") == expected["label"]
        shown = float(top.find_element(By.CLASS_NAME, "pct").text.rstrip("%"))
        assert shown == pytest.approx(100 * expected["probabilities"][expected["label"]], abs=0.051)
        WebDriverWait(driver, 10).until(lambda d: preview.is_displayed())
        assert driver.execute_script("return document.getElementById('preview').naturalWidth") > 0
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe  # no script errors, no blocked resources

        upload_and_wait(not_an_image, "error")  # the error in a user's words, and no broken-image icon
        assert driver.find_element(By.ID, "error").text == S.NOT_AN_IMAGE[0].upper() + S.NOT_AN_IMAGE[1:]
        assert not preview.is_displayed() and driver.find_element(By.ID, "headline").text == ""
        assert not driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
        upload_and_wait(upload, "done")  # and a good image after it shows again
        WebDriverWait(driver, 10).until(lambda d: preview.is_displayed())
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_host_header_allow_list_stops_dns_rebinding(run):
    client = TestClient(create_app(run[0], device="cpu", allowed_hosts=S.LOOPBACK))
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        assert client.get("/health", headers={"host": host}).status_code == 200, host
    for host in ("evil.example:8000", "evil.example", "127.0.0.1.evil.example"):
        assert_error(client.get("/health", headers={"host": host}), 400, "is not served here")


@pytest.mark.slow  # a real server, waited on past its header timeout
def test_slow_headers_are_cut_off_and_a_whole_request_is_answered(run, monkeypatch):
    monkeypatch.setattr(S, "HEADER_TIMEOUT", 0.5)
    server, thread, sock = _start_server(create_app(run[0], device="cpu"))
    port = sock.getsockname()[1]
    try:
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        time.sleep(1.5)
        assert slow.recv(1024) == b""  # closed by the server
        slow.close()
        whole = socket.create_connection(("127.0.0.1", port), timeout=5)
        whole.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in whole.recv(4096)
        whole.close()
        # a keep-alive connection gets the same deadline for its next request's headers
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += kept.recv(4096)
        assert b"200 OK" in answer
        kept.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.2)
        kept.sendall(b"Host: 127.0.0.1\r\n")  # still dribbling when the deadline passes
        time.sleep(0.6)
        assert kept.recv(1024) == b""
        kept.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_a_large_upload_is_reduced_while_it_is_decoded(run):
    buffer = io.BytesIO()
    Image.effect_noise((3000, 2000), 40).convert("RGB").save(buffer, format="JPEG")
    image = S.decode_upload(buffer.getvalue(), 10**8, reduce_to=100)
    assert 100 <= min(image.size) <= 400 and image.mode == "RGB"
    client = TestClient(create_app(run[0], device="cpu"))
    assert client.post("/predict", files={"file": ("big.jpg", buffer.getvalue())}).status_code == 200


def test_a_client_that_hangs_up_mid_upload_leaves_no_traceback(run, capfd):
    server, thread, sock = _start_server(create_app(run[0], device="cpu"))
    try:
        gone = socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=5)
        gone.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 500000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                     b"filename=\"x.jpg\"\r\n\r\n" + b"\0" * 50_000)
        time.sleep(0.2)
        gone.close()
        time.sleep(0.4)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
