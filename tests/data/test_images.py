"""The one image transform: odd files decode to the right pixels or are refused with a reason."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vlv.images import MAX_PIXELS, UnreadableImage, decode_image, preprocess, to_batch


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose header is patched to declare width × height (CRC fixed), as a decompression bomb."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"just some text, not pixels\n", "not an image"),
        (encode(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")[:300], "truncated"),  # in the header
        (encode(Image.effect_noise((64, 64), 50), "PNG")[:-500], "truncated"),  # in the pixel data
        (png_declaring(50_000, 50_000), "decompression bomb"),  # PIL's own limit (≈ 179 M) refuses it at open
        (png_declaring(9000, 8000), "too large"),  # 72 M: under PIL's limit, over ours
    ],
)
def test_unusable_files_are_refused_with_a_reason(data, reason):
    with pytest.raises(UnreadableImage) as e:
        decode_image(data)
    assert reason in e.value.reason


def test_a_refused_path_is_named_and_a_missing_one_is_not_found(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(UnreadableImage, match="text.jpg: not an image"):
        decode_image(tmp_path / "text.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        decode_image(tmp_path / "missing.jpg")


def test_size_limit_is_checked_from_the_header():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data).size == (100, 100)
    with pytest.raises(UnreadableImage, match="100×100"):
        decode_image(data, max_pixels=100 * 100 - 1)
    assert Image.MAX_IMAGE_PIXELS > MAX_PIXELS  # PIL's global limit is left alone


def test_sixteen_bit_gray_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535, 256]], dtype=np.uint16)
    im = decode_image(encode(Image.fromarray(arr), "PNG"))
    assert pixels(im)[0, :, 0].tolist() == [0, 128, 255, 1]


def test_transparency_is_composited_on_white():
    pal = Image.new("P", (4, 2))
    pal.putpalette([0, 0, 0, 255, 0, 0])  # 0: black (transparent), 1: red
    pal.putdata([0, 0, 1, 1] * 2)
    out = pixels(decode_image(encode(pal, "PNG", transparency=0)))
    assert out[:, :2].tolist() == [[[255, 255, 255]] * 2] * 2 and out[:, 2:].tolist() == [[[255, 0, 0]] * 2] * 2
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 255, 255)  # one opaque blue pixel, the rest transparent black
    out = pixels(decode_image(encode(Image.fromarray(rgba), "PNG")))
    assert out[0, 0].tolist() == [0, 0, 255] and out[1, 1].tolist() == [255, 255, 255]
    la = Image.fromarray(np.array([[[0, 0], [50, 255]]], np.uint8), "LA")
    assert pixels(decode_image(encode(la, "PNG")))[0].tolist() == [[255] * 3, [50] * 3]


def test_cmyk_grayscale_and_bilevel_become_rgb():
    cyan = pixels(decode_image(encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)))
    assert np.abs(cyan - [0, 255, 255]).max() <= 3
    assert pixels(decode_image(encode(Image.new("L", (3, 3), 100), "PNG"))).tolist() == [[[100] * 3] * 3] * 3
    assert pixels(decode_image(encode(Image.new("1", (3, 3), 1), "PNG"))).min() == 255


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :] = (0, 0, 255)
    arr[:6, :6] = (255, 0, 0)  # a red top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the stored image must turn 90° clockwise to display
    im = decode_image(encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes()))
    assert im.size == (20, 40)
    out = pixels(im)
    assert out[2, -3, 0] > 200 and out[2, 2, 0] < 50  # the red corner moved to the top right


def test_animated_images_give_their_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    for fmt in ("GIF", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
        assert pixels(decode_image(data))[4, 4].tolist() == [255, 0, 0], fmt


def test_preprocess_resizes_the_short_side_then_center_crops():
    arr = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    out = preprocess(Image.fromarray(arr), 16)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    reference = Image.fromarray(arr).resize((32, 16), Image.Resampling.BICUBIC).crop((8, 0, 24, 16))
    assert torch.equal(out, torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1))


@pytest.mark.parametrize("size", [(1, 1), (1000, 10), (10, 1000), (100_000, 1)])
def test_tiny_and_extreme_aspect_ratios_preprocess(size):
    im = Image.new("RGB", size, (10, 200, 30))
    out = preprocess(decode_image(encode(im, "PNG")), 16)
    assert out.shape == (3, 16, 16) and out[:, 8, 8].tolist() == [10, 200, 30]


def test_inference_inputs_get_the_training_pixels(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (30, 50, 4), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")  # RGBA: the alpha composite must match too
    expected = preprocess(decode_image(tmp_path / "x.png"), 24).float() / 255
    assert torch.equal(to_batch([tmp_path / "x.png"], 24)[0], expected)
    assert torch.equal(to_batch(Image.open(tmp_path / "x.png"), 24)[0], expected)
