"""Checks on one image file's bytes, and the conversion every accepted image goes through.

Order matters for safety: the header is parsed first (PIL reads only the header on ``open``), the
dimensions are checked against the limits, and only then are pixels decoded. Only a fixed set of
raster formats is accepted, so PIL never hands a file to an external program (e.g. Ghostscript).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.ingest.config import ValidationLimits
from pipelines.ingest.features import FeatureFn
from pipelines.ingest.quarantine import Reason

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO (phone photos)

# Leading bytes of the accepted formats (BMP's two-byte "BM" is too weak to tell text from an image):
# a file that starts like one of them but that PIL cannot identify is a broken image, not a non-image.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


@dataclass
class ImageCheck:
    sha256: str
    reason: Reason | None = None
    message: str = ""
    width: int = 0  # after EXIF orientation
    height: int = 0
    source_mode: str = ""
    image: np.ndarray | None = None  # RGB uint8 HxWx3 when accepted

    @property
    def ok(self) -> bool:
        return self.reason is None


def _open_header(data: bytes) -> Image.Image:
    # The bomb warning (pixels > Image.MAX_IMAGE_PIXELS) becomes an error; our own limit is checked
    # right after, on the same header dimensions.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)


def check_image_bytes(data: bytes, limits: ValidationLimits) -> ImageCheck:
    """Validate and decode one file. Never raises for bad input: the reason is in the result."""
    check = ImageCheck(sha256=hashlib.sha256(data).hexdigest())

    def fail(reason: Reason, message: str) -> ImageCheck:
        check.reason, check.message = reason, message
        return check

    if not data:
        return fail(Reason.EMPTY_FILE, "file is empty (0 bytes)")
    try:
        img = _open_header(data)
    except UnidentifiedImageError:
        if _signature(data):
            return fail(Reason.CORRUPT_IMAGE, f"starts like a {_signature(data)} file but its header cannot be read")
        return fail(Reason.NOT_AN_IMAGE, f"not a recognised image (accepted formats: {', '.join(ALLOWED_FORMATS)})")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return fail(Reason.DECOMPRESSION_BOMB, f"header dimensions refused by PIL: {exc}")
    except Exception as exc:  # broken headers raise all sorts of errors
        return fail(Reason.CORRUPT_IMAGE, f"unreadable image header: {type(exc).__name__}: {exc}")

    width, height = img.size
    check.source_mode = img.mode
    if width * height > limits.max_pixels:
        return fail(
            Reason.DECOMPRESSION_BOMB,
            f"header says {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}",
        )
    if max(width, height) > limits.max_side:
        return fail(Reason.IMAGE_TOO_LARGE, f"{width}x{height}: a side exceeds {limits.max_side} px")
    if min(width, height) < limits.min_side:
        return fail(Reason.IMAGE_TOO_SMALL, f"{width}x{height}: a side is below {limits.min_side} px")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img)
    except Exception as exc:
        return fail(Reason.CORRUPT_IMAGE, f"cannot decode image data: {type(exc).__name__}: {exc}")
    check.height, check.width = rgb.shape[:2]
    check.image = rgb
    return check


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> RGB uint8 HxWx3. Transparency is flattened onto white; 16-bit is scaled."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8).copy()


def decode_rgb(data: bytes, max_side: int | None = None) -> np.ndarray:
    """Decode bytes already accepted by :func:`check_image_bytes` (EXIF applied, RGB), optionally
    shrunk so the longer side is at most ``max_side`` (JPEG decodes at reduced scale directly)."""
    img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    if max_side is not None and img.format in ("JPEG", "MPO"):
        img.draft(None, (max_side, max_side))  # DCT scaling: never smaller than the requested size
    img.load()
    img = ImageOps.exif_transpose(img)
    rgb = to_rgb(img)
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        rgb = fit_within(rgb, max_side)
    return rgb


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Resize (keeping aspect) so the longer side is ``max_side``; smaller images are left alone."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))


def validate_batch(
    batch: dict[str, np.ndarray], *, limits: ValidationLimits, feature_fn: FeatureFn, feature_size: int
) -> dict[str, np.ndarray]:
    """Check every file of a ``read_binary_files`` batch (the Ray ``map_batches`` function of the
    validation pass); features only for accepted images. Pixels are dropped as soon as the small
    copy for ``feature_fn`` exists, so one full-size image is held at a time."""
    checks, small, accepted = [], [], []
    for i, data in enumerate(batch["bytes"]):
        check = check_image_bytes(bytes(data), limits)
        if check.ok:
            small.append(fit_within(check.image, feature_size))
            accepted.append(i)
        check.image = None
        checks.append(check)
    features: list[np.ndarray] = [np.zeros(0, np.float32) for _ in checks]
    if accepted:
        computed = np.asarray(feature_fn(small), dtype=np.float32)
        if computed.ndim != 2 or computed.shape[0] != len(accepted):
            raise ValueError(f"feature_fn must return an (n, d) array, got shape {computed.shape} for n={len(accepted)}")
        for row, i in enumerate(accepted):
            features[i] = computed[row]
    return {
        "path": np.asarray(batch["path"], dtype=object),
        "nbytes": np.asarray([len(d) for d in batch["bytes"]], dtype=np.int64),
        "sha256": np.asarray([c.sha256 for c in checks], dtype=object),
        "reason": np.asarray([c.reason.value if c.reason else "" for c in checks], dtype=object),
        "message": np.asarray([c.message for c in checks], dtype=object),
        "feature": features,
    }
