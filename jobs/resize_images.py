"""Example job: shrink every image to fit a square and re-encode it as an 8-bit JPEG."""

from __future__ import annotations

import io
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, Field

from mountproc import Context, Job, SourceFile

# Extensions of the formats Pillow reads that photo and scan archives commonly hold.
_EXTENSIONS = (
    "jpg", "jpeg", "jpe", "jfif", "png", "apng", "tif", "tiff", "gif", "bmp", "dib", "webp",
    "avif", "jp2", "j2k", "jpx", "ico", "tga", "pcx", "ppm", "pgm", "pbm", "pnm", "psd", "qoi",
    "sgi", "dds", "icns",
)  # fmt: skip
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_GRAY_MODES = {"1", "L", "LA", "La"}
_DECODE_ERRORS = (OSError, SyntaxError, EOFError)


class Params(BaseModel):
    """Parameters of ``resize-images``."""

    size: int = Field(224, ge=8, le=16384, description="Longest side of the output, in pixels.")
    quality: int = Field(90, ge=1, le=95, description="JPEG quality of the output (1-95).")


job = Job(
    name="resize-images",
    source="/mnt/raw-images",
    include=[f"*.{ext}" for ext in _EXTENSIONS],  # matched case-insensitively: *.JPG too
    dataset="dataset://preprocessed-images/v1",
    params=Params,
)


@job.transform
def resize(src: SourceFile, ctx: Context[Params]) -> dict[str, bytes]:
    """Fit the image (first frame, EXIF-oriented) inside ``size`` x ``size``; encode as JPEG."""
    image = load_fitted(src, ctx.params.size)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=ctx.params.quality, optimize=True)
    return {"jpg": buffer.getvalue()}


def load_fitted(src: SourceFile, size: int) -> Image.Image:
    """Decode the first frame as an 8-bit RGB or L image that fits inside ``size`` x ``size``."""
    try:
        with src.open() as raw, Image.open(raw) as opened:
            _refuse_bomb(opened)
            opened.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
            _load(opened)
            image = to_8bit(ImageOps.exif_transpose(opened))
    except UnidentifiedImageError as exc:
        raise ValueError(f"not a readable image: {exc}") from exc
    image.thumbnail((size, size), Image.Resampling.LANCZOS)  # keeps aspect, never enlarges
    return image


def _refuse_bomb(image: Image.Image) -> None:
    """A decompression bomb is a failed file, not a warning in a worker's log. Checked directly
    rather than through the warnings filter, which is process-wide and not thread-safe."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.size[0] * image.size[1]
    if limit is not None and pixels > limit:
        raise Image.DecompressionBombError(
            f"image has {pixels} pixels, more than the limit of {limit}: could be a "
            "decompression bomb DOS attack"
        )


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise ValueError(f"corrupt or truncated image: {exc}") from exc


def to_8bit(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to ``L`` or ``RGB``; transparency is composited onto white."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return _scale_to_l(image)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        flat = Image.new("RGBA", image.size, _WHITE)
        flat.alpha_composite(image.convert("RGBA"))
        return flat.convert("L" if mode in _GRAY_MODES else "RGB")
    return image.convert("L" if mode in _GRAY_MODES else "RGB")


def _scale_to_l(image: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit and float samples linearly onto 0-255 instead of clipping them."""
    wide = image.convert("F")
    low, high = cast("tuple[float, float]", wide.getextrema())
    if low >= 0 and high <= 1 and image.mode == "F":
        low, high = 0.0, 1.0  # a float image in the usual 0..1 range
    elif low >= 0 and high <= 255:
        low, high = 0.0, 255.0
    elif low >= 0 and high <= 65535:
        low, high = 0.0, 65535.0  # 16-bit samples, also when Pillow widened them to 'I'
    scale = 255.0 / (high - low) if high > low else 0.0
    return wide.point(lambda v: (v - low) * scale).convert("L")
