"""Per-file image checks: every bad input gets its own reason; odd-but-valid images become RGB."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.ingest.config import ValidationLimits
from pipelines.ingest.quarantine import Reason
from pipelines.ingest.validate import check_image_bytes, decode_rgb

LIMITS = ValidationLimits(min_side=16, max_side=4096, max_pixels=4_000_000)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_plain_png_is_accepted_as_rgb():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    check = check_image_bytes(encode(Image.fromarray(pixels)), LIMITS)
    assert check.ok and check.reason is None
    assert (check.width, check.height) == (50, 40)
    assert np.array_equal(check.image, pixels)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", Reason.EMPTY_FILE),
        (b"just some notes\n", Reason.NOT_AN_IMAGE),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", Reason.NOT_AN_IMAGE),  # EPS would call Ghostscript
        (encode(Image.new("RGB", (64, 64), "red"))[:60], Reason.CORRUPT_IMAGE),
        (png_header_only(20000, 20000), Reason.DECOMPRESSION_BOMB),  # over PIL's own hard limit
        (png_header_only(3000, 3000), Reason.DECOMPRESSION_BOMB),  # over our max_pixels only
        (png_header_only(4100, 100), Reason.IMAGE_TOO_LARGE),
        (encode(Image.new("RGB", (8, 64))), Reason.IMAGE_TOO_SMALL),
    ],
    ids=["empty", "text", "eps", "truncated", "bomb-pil", "bomb-limit", "too-large", "too-small"],
)
def test_bad_files_get_a_reason_and_a_message(data, reason):
    check = check_image_bytes(data, LIMITS)
    assert check.reason == reason
    assert check.message and check.image is None


def test_truncated_pixel_data_is_corrupt_not_accepted():
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(noisy)
    check = check_image_bytes(data[: len(data) // 2], LIMITS)
    assert check.reason == Reason.CORRUPT_IMAGE


def test_bomb_is_refused_from_the_header_without_allocating_pixels():
    tracemalloc.start()
    check = check_image_bytes(png_header_only(20000, 20000), LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert check.reason == Reason.DECOMPRESSION_BOMB
    assert peak < 10 * 1024 * 1024  # 20000x20000 RGB would be 1.2 GB


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), "white")
    img.paste((255, 0, 0), (0, 0, 10, 40))  # red band on the left edge as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    check = check_image_bytes(encode(img, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    assert check.ok
    assert check.image.shape == (80, 40, 3)  # portrait after rotation
    top_row = check.image[:5].reshape(-1, 3).mean(axis=0)
    assert top_row[0] > 200 and top_row[1] < 80  # the left edge is now the top edge
    assert np.array_equal(decode_rgb(encode(img, "JPEG", exif=exif.tobytes(), quality=95)).shape, (80, 40, 3))


def test_rgba_is_flattened_onto_white():
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent black
    img.paste((0, 0, 255, 255), (0, 0, 16, 32))
    check = check_image_bytes(encode(img), LIMITS)
    assert check.ok and check.source_mode == "RGBA"
    assert tuple(check.image[0, 31]) == (255, 255, 255)
    assert tuple(check.image[0, 0]) == (0, 0, 255)


def test_palette_cmyk_grayscale_and_16_bit_become_rgb():
    palette = Image.new("RGB", (32, 32), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    cmyk = Image.new("RGB", (32, 32), (220, 20, 20)).convert("CMYK")
    gray16 = Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))
    gray16.paste(32896, (0, 0, 16, 32))
    cases = {
        "P": (encode(palette), (10, 200, 30)),
        "CMYK": (encode(cmyk, "JPEG", quality=95), (220, 20, 20)),
        "L": (encode(Image.new("L", (32, 32), 77)), (77, 77, 77)),
    }
    for mode, (data, colour) in cases.items():
        check = check_image_bytes(data, LIMITS)
        assert check.ok and check.source_mode == mode, mode
        assert check.image.dtype == np.uint8 and check.image.shape == (32, 32, 3)
        assert np.abs(check.image[16, 16].astype(int) - colour).max() <= 12, (mode, check.image[16, 16])
    check = check_image_bytes(encode(gray16), LIMITS)
    assert check.ok and check.source_mode.startswith("I")
    assert tuple(check.image[0, 31]) == (255, 255, 255) and tuple(check.image[0, 0]) == (128, 128, 128)


def test_decode_rgb_shrinks_large_images():
    data = encode(Image.new("RGB", (800, 400), "green"), "JPEG")
    assert decode_rgb(data, max_side=100).shape == (50, 100, 3)
