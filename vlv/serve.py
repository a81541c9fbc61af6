"""The web demo (`vlv serve`): upload an image, see its caption and its reconstruction; upload two, see their
composition. A Gradio app over the public API only — `model.caption`, `model.reconstruct`, `model.compose` and
`vlv.images` — so it shows exactly what those return.

It runs fully offline: no CDN (Gradio's default theme ships its fonts), no share link, no telemetry or version
check. Uploads are bounded in bytes by Gradio before they reach the app (HTTP 413) and decoded by
`vlv.images.decode_image`, which judges a file by its content, not its name; a file it cannot use becomes a
`gr.Error` naming the upload and the reason. The model runs one request at a time: concurrent requests wait in
Gradio's queue.
"""

from __future__ import annotations

import os
import time

# Before Gradio is imported: its version check and usage reporting read this when the app is built.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

import vlv  # noqa: E402
from vlv.images import UnreadableImage, decode_image, to_pil  # noqa: E402

# Images are shown at least this many pixels wide: a 16-px shapes scene at its natural size is a speck. They are
# enlarged by a whole factor with nearest-neighbour, so each model pixel stays a sharp square.
DISPLAY_SIZE = 256
# Upload types offered by the file picker (a convenience: the content decides, see `read_upload`).
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"]
# The two uploads, as error messages name them.
SLOTS = ("first image", "second image")
# Every model run shares this queue slot, so that captioning, reconstruction and composition never overlap.
MODEL_QUEUE = "model"

# What `run` returns, in the order of the app's outputs: for each upload its caption, the input as the model sees it
# and the reconstruction; then the composition. Empty ("" / None) where there is nothing to show.
Shown = Image.Image | None
Result = tuple[str, Shown, Shown, str, Shown, Shown, Shown]


def enlarge(image: Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """`image` scaled up by the whole factor that brings its longer side closest to `size` (never down)."""
    factor = max(1, size // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def read_upload(path: str, slot: str) -> Image.Image:
    """An uploaded file → RGB image; a file that is not a usable image → `gr.Error` naming the upload."""
    try:
        return decode_image(path)
    except (UnreadableImage, FileNotFoundError) as e:
        reason = e.reason if isinstance(e, UnreadableImage) else "the upload is gone; upload it again"
        # A user's mistake, not the server's: no traceback in the server's log.
        raise gr.Error(f"{slot}: {reason}", print_exception=False) from None


def run(model: vlv.VLV, first: str | None, second: str | None, seed: float | None = 0) -> Result:
    """The app's one handler: uploaded file paths (either may be None) and a sampling seed → the caption, the
    input as the model sees it (its S × S center crop) and the reconstruction of each upload, then the
    composition of the two (None unless both are given). Images come enlarged for display."""
    paths = {slot: path for slot, path in zip(SLOTS, (first, second)) if path}
    if not paths:
        raise gr.Error("upload an image first", print_exception=False)
    images = [read_upload(path, slot) for slot, path in paths.items()]
    seed = int(seed or 0)
    captions = model.caption(images)
    seen = to_pil(model.preprocess(images))  # (B, 3, S, S): the pixels the encoder and the teacher see
    reconstructions = to_pil(model.reconstruct(images, seed=seed))
    composition = to_pil(model.compose(images, seed=seed))[0] if len(images) == 2 else None
    out: dict[str, tuple] = {slot: ("", None, None) for slot in SLOTS}
    for slot, text, im, rec in zip(paths, captions, seen, reconstructions):
        out[slot] = (text, enlarge(im), enlarge(rec))
    return (*out[SLOTS[0]], *out[SLOTS[1]], enlarge(composition) if composition is not None else None)


def build_app(model: vlv.VLV, *, title: str = "VLV") -> gr.Blocks:
    """The Gradio app around `model` (not started: see `launch` and `serve`)."""
    size = model.config.teacher.image_size
    # Uploads and shown images are cached on disk by Gradio: drop those older than an hour, every hour.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            f"# {title}\nUpload an image: its caption and its reconstruction through the frozen text-to-image "
            f"teacher. Upload a second one: the composition of the two. Images are center-cropped to the model's "
            f"{size} × {size} pixels and shown enlarged."
        )
        columns = []
        with gr.Row(equal_height=False):
            for slot in SLOTS:
                with gr.Column():
                    upload = gr.File(
                        label=slot, file_types=IMAGE_TYPES, type="filepath", height=140, elem_id=_id(slot, "upload")
                    )
                    caption = gr.Textbox(label="caption", interactive=False, elem_id=_id(slot, "caption"))
                    with gr.Row():
                        seen = _image(f"{slot}, as the model sees it", _id(slot, "input"))
                        rec = _image("reconstruction", _id(slot, "reconstruction"))
                columns.append((upload, caption, seen, rec))
        with gr.Row():
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="sampling seed")
            button = gr.Button("Run", variant="primary", elem_id="run")
        composition = _image("composition of the two images", "composition")
        (first, *outputs_1), (second, *outputs_2) = columns
        button.click(
            lambda a, b, s: run(model, a, b, s),
            inputs=[first, second, seed],
            outputs=[*outputs_1, *outputs_2, composition],
            concurrency_limit=1,
            concurrency_id=MODEL_QUEUE,
            api_name="run",
        )
    return app


def launch(model: vlv.VLV, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 10.0) -> gr.Blocks:
    """Start `model`'s app at http://host:port in the background and return it (`.close()` stops it)."""
    app = build_app(model, title=f"VLV — {model.config.name}")
    # A bounded queue: a flood of submissions is refused (the page says the queue is full) instead of piling up.
    app.queue(max_size=64)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=int(max_upload_mb * 1024 * 1024),  # checked by Gradio's upload route: HTTP 413 above it
        prevent_thread_lock=True,
        quiet=True,  # Gradio's own banner would advertise a share link; `serve` prints the URL
        ssr_mode=False,  # client-side rendering: no Node server
        mcp_server=False,
        pwa=False,
    )
    return app


def serve(model: vlv.VLV, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 10.0) -> None:
    """Serve `model`'s app at http://host:port until Ctrl-C. Loopback by default: the app has no authentication."""
    app = launch(model, host=host, port=port, max_upload_mb=max_upload_mb)
    print(f"vlv serve: {model.config.name} model at {url(host, app.server_port)} (Ctrl-C stops)", flush=True)
    try:
        while app.is_running:  # the server runs in its own threads; this one only waits for Ctrl-C
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        app.close(verbose=False)
    print("vlv serve: stopped", flush=True)


def url(host: str, port: int) -> str:
    """The address a browser opens: a wildcard bind is reached through loopback, an IPv6 host goes in brackets."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(label=label, type="pil", format="png", interactive=False, elem_id=elem_id, buttons=["download"])


def _id(slot: str, what: str) -> str:
    """The element id of a slot's component (e.g. `first-caption`), for the page's scripts and tests."""
    return f"{slot.split()[0]}-{what}"
