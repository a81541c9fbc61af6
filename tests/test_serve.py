"""The web demo (`vlv serve`): its handler and HTTP endpoints on bad input and concurrent requests, and the real page
in a headless Chromium, each checked against what the Python API returns for the same images.

The model is the committed shapes stage-1 checkpoint (committed teacher and encoder, random-init caption decoder:
its captions are word salad, but the page must show exactly that salad), saved with 2 sampling steps and
8-token captions so that a request takes well under a second.
"""

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

import vlv
from vlv.images import to_pil
from vlv.serve import DISPLAY_SIZE, enlarge, launch, run
from vlv.shapes.preset import ENCODER
from vlv.shapes.world import render, sample_compositions, sample_scenes

CHROMIUM = "/usr/bin/chromium"  # Debian's package: `playwright install` needs the internet, apt does not


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here too: this module runs three busy processes (pytest, `vlv serve`, Chromium) on as few as
    two cores, and oversubscribed threads made the tiny model's calls ten times slower there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = vlv.load(ENCODER)
    cfg = model.config
    model.config = dataclasses.replace(
        cfg,
        sampling=dataclasses.replace(cfg.sampling, steps=2),
        generation=dataclasses.replace(cfg.generation, max_new_tokens=8),
    )
    model.caption([render(sample_scenes(1, seed=0)[0])])  # builds the caption decoder, so that its weights are saved
    out = tmp_path_factory.mktemp("serve") / "model"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model(checkpoint):
    return vlv.load(checkpoint)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Two shapes renders and three bad uploads: a text file named .png, a truncated PNG, an oversized file."""
    d = tmp_path_factory.mktemp("uploads")
    first, second, _ = sample_compositions(1, seed=0)[0]  # one-object scenes in distinct quadrants
    render(first).save(d / "first.png")
    render(second).save(d / "second.png")
    (d / "text.png").write_text("not an image, whatever its name says")
    png = (d / "first.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    (d / "oversized.png").write_bytes(png + bytes(2 * 1024 * 1024))  # a valid PNG, over a 1-MiB limit
    return {p.stem: p for p in d.iterdir()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shown(path: str | Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


class Watched:
    """The real model, counting how many of its calls run at the same time."""

    def __init__(self, model):
        self.model, self.active, self.most, self.lock = model, 0, 0, threading.Lock()

    def __getattr__(self, name):
        attr = getattr(self.model, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
            try:
                time.sleep(0.05)  # widen the window in which an overlapping request would be caught
                return attr(*args, **kwargs)
            finally:
                with self.lock:
                    self.active -= 1

        return call


def test_handler_shows_what_the_api_returns_and_names_bad_uploads(model, files):
    first, second = Image.open(files["first"]), Image.open(files["second"])
    caption_1, seen_1, rec_1, caption_2, seen_2, rec_2, composition = run(model, str(files["first"]), None, 5)
    assert caption_1 == model.caption([first])[0]
    assert same_pixels(rec_1, enlarge(to_pil(model.reconstruct([first], seed=5))[0]))
    assert same_pixels(seen_1, enlarge(to_pil(model.preprocess([first]))[0]))
    assert rec_1.size == (DISPLAY_SIZE, DISPLAY_SIZE)  # 16 px × 16: nearest-neighbour, whole factor
    assert (caption_2, seen_2, rec_2, composition) == ("", None, None, None)

    out = run(model, str(files["first"]), str(files["second"]), 5)
    assert [out[0], out[3]] == model.caption([first, second])
    assert same_pixels(out[6], enlarge(to_pil(model.compose([first, second], seed=5))[0]))

    with pytest.raises(gr.Error, match="^'?first image: not an image"):
        run(model, str(files["text"]), None)
    with pytest.raises(gr.Error, match="second image: truncated"):
        run(model, str(files["first"]), str(files["truncated"]))
    with pytest.raises(gr.Error, match="upload an image first"):
        run(model, None, None)


def test_server_rejects_bad_uploads_cleanly_and_runs_the_model_one_request_at_a_time(model, files):
    watched = Watched(model)
    app = launch(watched, port=free_port(), max_upload_mb=1)
    try:
        url = app.local_url
        # Oversized: refused by the upload route itself, before anything is stored or decoded.
        with open(files["oversized"], "rb") as f:
            r = httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=30)
        assert r.status_code == 413 and "exceeded" in r.text and "Traceback" not in r.text

        client = Client(url, verbose=False)
        for name, message in (("text", "first image: not an image"), ("truncated", "first image: truncated")):
            with pytest.raises(Exception, match=message) as e:  # gradio_client's AppError carries our message
                client.predict(handle_file(files[name]), None, 0, api_name="/run")
            assert "Traceback" not in str(e.value)

        # Four requests at once: all answered, each with the API's result for its seed, never two in the model.
        jobs = [client.submit(handle_file(files["first"]), None, seed, api_name="/run") for seed in range(4)]
        results = [job.result(timeout=120) for job in jobs]
        image = Image.open(files["first"])
        assert all(r[0] == model.caption([image])[0] for r in results)
        for seed, r in enumerate(results):
            assert same_pixels(shown(r[2]), enlarge(to_pil(model.reconstruct([image], seed=seed))[0]))
        assert watched.most == 1

        # Still serving after all that: the page and a request.
        assert httpx.get(url, timeout=30).status_code == 200
        assert client.predict(handle_file(files["second"]), None, 0, api_name="/run")[0]
    finally:
        app.close(verbose=False)


class Served:
    """`vlv serve` in its own process, as a user starts it. Started as soon as the checkpoint exists, so that it
    loads while the other tests run."""

    def __init__(self, checkpoint: Path, temp: Path):
        # One thread: the served model is tiny, and the other core is left to the test process and the browser.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(temp), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "vlv", "serve", "--model", str(checkpoint), "--port", str(free_port())]
        self.proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # SIGINT back to its default in the child: a test runner started in the background may have it ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def url(self) -> str:
        """The URL `vlv serve` printed, once it has."""
        deadline = time.monotonic() + 120
        while not re.search(r"http://\S+", self.output()):
            assert self.proc.poll() is None, "vlv serve exited:\n" + self.output()
            assert time.monotonic() < deadline, "vlv serve printed no URL:\n" + self.output()
            time.sleep(0.1)
        return re.search(r"http://\S+", self.output()).group(0)


@pytest.fixture(scope="module", autouse=True)
def served(checkpoint, tmp_path_factory):
    server = Served(checkpoint, tmp_path_factory.mktemp("gradio"))
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM} (apt-get install chromium)")
def test_browser_shows_the_apis_caption_reconstruction_and_composition(served, model, files, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url = served.url()
    first, second = Image.open(files["first"]), Image.open(files["second"])
    outside = []  # every request the page makes beyond the server: the demo must work offline

    def only_local(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", only_local)
            page.goto(url)

            # One image: its caption and its reconstruction.
            page.locator("#first-upload input[type=file]").set_input_files(files["first"])
            # Its download link appears once the file has reached the server.
            expect(page.locator("#first-upload a[download='first.png']")).to_be_visible()
            page.click("#run")
            expect(page.locator("#first-caption textarea")).to_have_value(model.caption([first])[0], timeout=60_000)
            reconstruction = page.locator("#first-reconstruction img")
            expect(reconstruction).to_be_visible()
            assert reconstruction.evaluate("e => e.complete && e.naturalWidth") == DISPLAY_SIZE

            # A text file named .png as the second image: a clean message on the page, and the app carries on.
            page.locator("#second-upload input[type=file]").set_input_files(files["text"])
            expect(page.locator("#second-upload a[download='text.png']")).to_be_visible()
            page.click("#run")
            message = page.get_by_text("second image: not an image")
            expect(message).to_be_visible(timeout=60_000)
            page.locator("[data-testid='toast-close']").click()
            expect(message).to_be_hidden()

            # Two images: both captions and their composition.
            page.locator("#second-upload button[aria-label='Clear']").click()
            page.locator("#second-upload input[type=file]").set_input_files(files["second"])
            expect(page.locator("#second-upload a[download='second.png']")).to_be_visible()
            page.click("#run")
            captions = model.caption([first, second])
            expect(page.locator("#second-caption textarea")).to_have_value(captions[1], timeout=60_000)
            expect(page.locator("#first-caption textarea")).to_have_value(captions[0])
            composition = page.locator("#composition img")
            expect(composition).to_be_visible()
            assert composition.evaluate("e => e.complete && e.naturalWidth") == DISPLAY_SIZE

            screenshot = tmp_path / "serve.png"
            page.screenshot(path=screenshot, full_page=True)
            if os.environ.get("VLV_SCREENSHOT"):
                shutil.copyfile(screenshot, os.environ["VLV_SCREENSHOT"])
        finally:
            browser.close()
    assert outside == []


def test_vlv_serve_binds_loopback_and_stops_cleanly_on_ctrl_c(served):
    assert served.url().startswith("http://127.0.0.1:")  # loopback unless told otherwise
    assert httpx.get(served.url(), timeout=30).status_code == 200
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=30) == 0
    served.reader.join(timeout=5)
    assert "vlv serve: stopped" in served.output() and "Traceback" not in served.output(), served.output()
