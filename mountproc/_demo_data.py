"""Deterministic trees of real, photo-like demo images for quick starts, tests and benchmarks
(``mountproc sample-data``)."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

Size = tuple[int, int]
Writer = Callable[[Path, random.Random, Size], None]

_FOLDERS = ("clinic-a/2024-01", "clinic-a/2024-02", "clinic-b/2024-01", "clinic-c/archive/2023/q4")
_EXIF_ORIENTATION = 0x0112
_CAMERA_PER_FOLDER = 250


def photo(rng: random.Random, size: Size) -> Image.Image:
    """An RGB image that compresses like a photo: smooth gradients, soft shapes and sensor noise."""
    image = Image.merge("RGB", [_gradient(rng, size) for _ in range(3)])
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(rng.randint(3, 6)):
        x, y = rng.randrange(width), rng.randrange(height)
        rx, ry = rng.randint(width // 20, width // 4), rng.randint(height // 20, height // 4)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = draw.ellipse if rng.random() < 0.6 else draw.rectangle
        shape((x - rx, y - ry, x + rx, y + ry), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(max(1.0, max(size) / 300)))
    return add_noise(image, rng, 0.06)


def add_noise(image: Image.Image, rng: random.Random, amount: float) -> Image.Image:
    """Blend seeded uniform noise into an RGB image (``Image.effect_noise`` is not seedable)."""
    noise = Image.frombytes("RGB", image.size, rng.randbytes(image.width * image.height * 3))
    return Image.blend(image, noise, amount)


def _gradient(rng: random.Random, size: Size) -> Image.Image:
    base = Image.linear_gradient("L") if rng.random() < 0.7 else Image.radial_gradient("L")
    turn = rng.choice((None, *Image.Transpose))
    if turn is not None:
        base = base.transpose(turn)
    low = rng.randrange(0, 128)
    high = rng.randrange(low + 64, 256)
    return base.resize(size, Image.Resampling.BILINEAR).point(
        lambda v: low + v * (high - low) // 255
    )


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode ``image`` in memory with Pillow."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _jpeg(path: Path, rng: random.Random, size: Size) -> None:
    path.write_bytes(encode(photo(rng, size), "JPEG", quality=90))


def _portrait_jpeg(path: Path, rng: random.Random, size: Size) -> None:
    _jpeg(path, rng, (size[1], size[0]))


def _rgba_png(path: Path, rng: random.Random, size: Size) -> None:
    mask = Image.new("L", size, 0)
    width, height = size
    ImageDraw.Draw(mask).ellipse((width // 8, height // 8, width * 7 // 8, height * 7 // 8), 255)
    image = photo(rng, size)
    image.putalpha(mask)  # opaque ellipse, fully transparent corners
    path.write_bytes(encode(image, "PNG"))


def _palette_alpha_png(path: Path, rng: random.Random, size: Size) -> None:
    image = photo(rng, size).quantize(colors=63)
    palette = image.getpalette() or []
    image.putpalette([*palette[: 63 * 3], *[0] * (63 * 3 - len(palette)), 255, 255, 255])
    width, height = size
    ImageDraw.Draw(image).rectangle((0, 0, width // 3, height // 3), fill=63)
    path.write_bytes(encode(image, "PNG", transparency=63))  # top-left third is see-through


def _cmyk_jpeg(path: Path, rng: random.Random, size: Size) -> None:
    path.write_bytes(encode(photo(rng, size).convert("CMYK"), "JPEG", quality=90))


def _gray16_png(path: Path, rng: random.Random, size: Size) -> None:
    gray = photo(rng, size).convert("L").convert("I").point(lambda v: v * 257)
    path.write_bytes(encode(gray.convert("I;16"), "PNG"))


def _animated_gif(path: Path, rng: random.Random, size: Size) -> None:
    frames = [photo(rng, size).quantize(colors=128) for _ in range(3)]
    path.write_bytes(encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0))


def _tiff(path: Path, rng: random.Random, size: Size) -> None:
    path.write_bytes(encode(photo(rng, size), "TIFF", compression="tiff_lzw"))


def _webp(path: Path, rng: random.Random, size: Size) -> None:
    path.write_bytes(encode(photo(rng, size), "WEBP", quality=85))


def _bmp(path: Path, rng: random.Random, size: Size) -> None:
    path.write_bytes(encode(photo(rng, size), "BMP"))


def _exif_rotated_jpeg(path: Path, rng: random.Random, size: Size) -> None:
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6  # stored landscape, displayed portrait (rotate 90 clockwise)
    path.write_bytes(encode(photo(rng, size), "JPEG", quality=90, exif=exif.tobytes()))


_SPECIAL: dict[str, Writer] = {
    "clinic-a/2024-01/overlay_rgba.png": _rgba_png,
    "clinic-a/2024-01/rotated_exif6.jpg": _exif_rotated_jpeg,
    "clinic-a/2024-02/palette_alpha.png": _palette_alpha_png,
    "clinic-a/2024-02/same_name.jpg": _jpeg,
    "clinic-b/2024-01/same_name.jpg": _portrait_jpeg,
    "clinic-b/2024-01/press_cmyk.jpg": _cmyk_jpeg,
    "clinic-b/2024-02/depth_16bit.png": _gray16_png,
    "clinic-b/legacy/scanner.bmp": _bmp,
    "clinic-c/animated.gif": _animated_gif,
    "clinic-c/archive/2023/q4/scan.tif": _tiff,
    "clinic-c/archive/2023/q4/phone.webp": _webp,
}


def _text_as_jpeg(path: Path, rng: random.Random, size: Size) -> None:
    path.write_text("Patient notes, not an image.\n", encoding="utf-8")


def _random_bytes(path: Path, rng: random.Random, size: Size) -> None:
    path.write_bytes(rng.randbytes(4096))


def _truncated_jpeg(path: Path, rng: random.Random, size: Size) -> None:
    data = encode(photo(rng, size), "JPEG", quality=90)
    path.write_bytes(data[: len(data) * 6 // 10])


def _empty(path: Path, rng: random.Random, size: Size) -> None:
    path.write_bytes(b"")


def _png_named_jpeg(path: Path, rng: random.Random, size: Size) -> None:
    path.write_bytes(encode(photo(rng, size), "PNG"))


BAD_FILES: dict[str, Writer] = {
    "clinic-a/2024-02/corrupt.jpg": _random_bytes,
    "clinic-b/2024-01/truncated.jpg": _truncated_jpeg,
    "clinic-c/empty.png": _empty,
    "clinic-c/notes.jpg": _text_as_jpeg,
}
"""The unreadable files ``make_demo_tree(bad=True)`` adds, by relative path."""

READABLE_ODDITIES: dict[str, Writer] = {"clinic-a/2024-01/really_a_png.jpg": _png_named_jpeg}
"""Files ``bad=True`` adds that look wrong but that Pillow reads (a PNG named ``.jpg``)."""


def make_demo_tree(
    root: Path, *, count: int = 48, seed: int = 0, size: Size = (640, 480), bad: bool = False
) -> list[Path]:
    """Write ``count`` readable images of many formats and modes under ``root`` (plus unreadable
    and oddly named files if ``bad``); the same arguments give byte-identical files."""
    if count < len(_SPECIAL):
        raise ValueError(f"count must be at least {len(_SPECIAL)}, got {count}")
    writers = {**_SPECIAL, **_regular_files(count - len(_SPECIAL))}
    if bad:
        writers |= {**BAD_FILES, **READABLE_ODDITIES}
    return [
        _write(root, relpath, writer, seed, size) for relpath, writer in sorted(writers.items())
    ]


def _regular_files(count: int) -> dict[str, Writer]:
    files: dict[str, Writer] = {}
    for i in range(count):
        suffix = ".JPG" if i % 3 == 2 else ".jpg"  # camera-style upper case, too
        relpath = f"{_FOLDERS[i % len(_FOLDERS)]}/IMG_{i:04d}{suffix}"
        files[relpath] = _portrait_jpeg if i % 5 == 2 else _jpeg
    return files


def _write(root: Path, relpath: str, writer: Writer, seed: int, size: Size) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(path, random.Random(f"{seed}:{relpath}"), size)  # per-file seed: stable trees
    return path


def make_camera_jpegs(
    root: Path, count: int, size: Size = (1600, 1200), seed: int = 0
) -> list[Path]:
    """Write ``count`` distinct camera-sized photo-like JPEGs (quality 90) quickly, for
    benchmarks: a few base photos varied by crop, mirroring and a small shape each."""
    rng = random.Random(seed)
    margin = (size[0] // 8, size[1] // 8)
    bases = [photo(rng, (size[0] + margin[0], size[1] + margin[1])) for _ in range(4)]
    paths = []
    for i in range(count):
        path = root / f"camera-{i // _CAMERA_PER_FOLDER:03d}" / f"DSC_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            encode(_variant(bases[i % len(bases)], rng, size, margin), "JPEG", quality=90)
        )
        paths.append(path)
    return paths


def _variant(base: Image.Image, rng: random.Random, size: Size, margin: Size) -> Image.Image:
    left, top = rng.randrange(margin[0] + 1), rng.randrange(margin[1] + 1)
    image = base.crop((left, top, left + size[0], top + size[1]))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x, y = rng.randrange(size[0]), rng.randrange(size[1])
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    ImageDraw.Draw(image).ellipse((x - 40, y - 40, x + 40, y + 40), fill=colour)
    return image
