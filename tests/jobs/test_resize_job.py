"""Tests of the example job ``jobs/resize_images.py``, called directly without a cluster."""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO
from PIL import Image, ImageDraw, JpegImagePlugin

from mountproc._demo_data import BAD_FILES, READABLE_ODDITIES, make_demo_tree
from mountproc._errors import SettingsError
from mountproc._job import Job
from mountproc._jobfile import load_job, read_job_file

JOB_FILE = REPO / "jobs" / "resize_images.py"
RED, BLUE, WHITE = (220, 30, 30), (30, 30, 220), (255, 255, 255)


@pytest.fixture(scope="module")
def job() -> Job:
    return load_job(read_job_file(JOB_FILE))


def transform(job: Job, path: Path, tmp_path: Path, **params: Any) -> dict[str, bytes]:
    return job.apply(path, **{"size": 64, **params})


def resized(job: Job, path: Path, tmp_path: Path, **params: Any) -> Image.Image:
    out = transform(job, path, tmp_path, **params)
    assert set(out) == {"jpg"}
    image = Image.open(io.BytesIO(out["jpg"]))
    image.load()
    assert image.format == "JPEG"
    assert image.mode in ("RGB", "L")
    return image


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


def close(actual: Any, expected: Any, tolerance: int = 12) -> bool:
    pixels = actual if isinstance(actual, tuple) else (actual,)
    wanted = expected if isinstance(expected, tuple) else (expected,)
    return all(abs(a - b) <= tolerance for a, b in zip(pixels, wanted, strict=True))


def test_declaration(job: Job) -> None:
    assert job.name == "resize-images"
    assert job.dataset == "dataset://preprocessed-images/v1"
    for ext in ("jpg", "jpeg", "jpe", "png", "tif", "tiff", "gif", "bmp", "webp"):
        assert f"*.{ext}" in job.include


def test_params_defaults_and_bounds(job: Job) -> None:
    params = job.parse_params({})
    assert params.model_dump() == {"size": 224, "quality": 90}
    with pytest.raises(SettingsError, match="size"):
        job.parse_params({"size": 4})
    with pytest.raises(SettingsError, match="quality"):
        job.parse_params({"quality": 100})


@pytest.mark.parametrize(
    ("width", "height"), [(300, 200), (200, 300), (1000, 10), (10, 1000), (64, 64), (129, 65)]
)
def test_fits_inside_size_keeping_aspect(job: Job, tmp_path: Path, width: int, height: int) -> None:
    path = save(Image.new("RGB", (width, height), RED), tmp_path / "in.png")
    out = resized(job, path, tmp_path, size=64)
    assert max(out.size) == 64
    assert min(out.size) >= 1
    if width >= height:
        assert abs(out.height - 64 * height / width) <= 1
    else:
        assert abs(out.width - 64 * width / height) <= 1


def test_never_upscales(job: Job, tmp_path: Path) -> None:
    path = save(Image.new("RGB", (40, 30), RED), tmp_path / "small.jpg")
    assert resized(job, path, tmp_path, size=64).size == (40, 30)


def test_quality_changes_the_encoding(job: Job, tmp_path: Path) -> None:
    rng = random.Random(1)
    noisy = Image.frombytes("RGB", (200, 200), rng.randbytes(200 * 200 * 3))
    path = save(noisy, tmp_path / "noisy.png")
    low = transform(job, path, tmp_path, size=200, quality=20)["jpg"]
    high = transform(job, path, tmp_path, size=200, quality=95)["jpg"]
    assert len(low) < len(high) / 2


def test_exif_orientation_is_applied(job: Job, tmp_path: Path) -> None:
    stored = Image.new("RGB", (300, 200), BLUE)
    ImageDraw.Draw(stored).rectangle((0, 0, 149, 199), fill=RED)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: left becomes top
    path = save(stored, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    out = resized(job, path, tmp_path, size=64)
    assert out.size == (43, 64)
    assert close(out.getpixel((21, 5)), RED, 40)
    assert close(out.getpixel((21, 58)), BLUE, 40)


def test_big_jpeg_is_decoded_in_draft_mode(
    job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    path = save(big, tmp_path / "big.jpg", quality=90)
    decoded_sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: Any) -> Any:
        result = original(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = resized(job, path, tmp_path, size=224)
    assert out.size == (224, 168)
    assert decoded_sizes == [(500, 375)]  # decoded at 1/8 scale, never at 4000 x 3000


def test_cmyk_becomes_rgb(job: Job, tmp_path: Path) -> None:
    path = save(Image.new("RGB", (120, 80), RED).convert("CMYK"), tmp_path / "cmyk.jpg")
    out = resized(job, path, tmp_path)
    assert out.mode == "RGB"
    assert close(out.getpixel((30, 20)), RED)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_is_scaled_not_clipped(job: Job, tmp_path: Path, mode: str) -> None:
    deep = Image.new("I", (128, 64), 1000)
    deep.paste(65000, (64, 0, 128, 64))
    if mode == "I;16":
        path = save(deep.convert("I;16"), tmp_path / "deep.png")
    else:
        path = save(deep, tmp_path / "deep.tif")  # TIFF keeps 32-bit 'I'
    with Image.open(path) as check:
        assert check.mode == mode
    out = resized(job, path, tmp_path)
    assert out.mode == "L"
    assert close(out.getpixel((5, 16)), 4)  # 1000 / 65535 of white, not clipped to 255
    assert close(out.getpixel((58, 16)), 253)


def test_float_image_is_scaled(job: Job, tmp_path: Path) -> None:
    floats = Image.new("F", (128, 64), 0.0)
    floats.paste(1.0, (64, 0, 128, 64))
    path = save(floats, tmp_path / "floats.tif")
    out = resized(job, path, tmp_path)
    assert out.mode == "L"
    assert close(out.getpixel((5, 16)), 0)
    assert close(out.getpixel((58, 16)), 255)


def test_one_bit_becomes_gray(job: Job, tmp_path: Path) -> None:
    bits = Image.new("1", (128, 64), 0)
    bits.paste(1, (64, 0, 128, 64))
    out = resized(job, save(bits, tmp_path / "bits.png"), tmp_path)
    assert out.mode == "L"
    assert close(out.getpixel((5, 16)), 0)
    assert close(out.getpixel((58, 16)), 255)


def test_rgba_transparency_becomes_white(job: Job, tmp_path: Path) -> None:
    image = Image.new("RGBA", (128, 64), (*RED, 255))
    image.paste((0, 0, 0, 0), (64, 0, 128, 64))  # transparent black must not show as black
    out = resized(job, save(image, tmp_path / "alpha.png"), tmp_path)
    assert out.mode == "RGB"
    assert close(out.getpixel((5, 16)), RED)
    assert close(out.getpixel((58, 16)), WHITE)


def test_gray_alpha_becomes_gray_on_white(job: Job, tmp_path: Path) -> None:
    image = Image.new("LA", (128, 64), (40, 255))
    image.paste((0, 0), (64, 0, 128, 64))
    out = resized(job, save(image, tmp_path / "la.png"), tmp_path)
    assert out.mode == "L"
    assert close(out.getpixel((5, 16)), 40)
    assert close(out.getpixel((58, 16)), 255)


def test_palette_transparency_becomes_white(job: Job, tmp_path: Path) -> None:
    image = Image.new("P", (128, 64), 1)
    image.putpalette([0, 0, 0, *RED])
    image.paste(0, (64, 0, 128, 64))
    path = save(image, tmp_path / "palette.png", transparency=0)
    out = resized(job, path, tmp_path)
    assert out.mode == "RGB"
    assert close(out.getpixel((5, 16)), RED)
    assert close(out.getpixel((58, 16)), WHITE)


def test_multi_frame_gif_uses_first_frame(job: Job, tmp_path: Path) -> None:
    frames = [Image.new("RGB", (96, 64), colour).convert("P") for colour in (RED, BLUE, WHITE)]
    path = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(path) as check:
        assert check.n_frames == 3
    out = resized(job, path, tmp_path)
    assert close(out.getpixel((20, 20)), RED, 40)


@pytest.mark.parametrize("limit", [6000, 1000])  # warning zone (1x-2x), then hard error (>2x)
def test_decompression_bomb_fails(
    job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    path = save(Image.new("RGB", (100, 100), RED), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # so only the transform's own filter can raise
        with pytest.raises(
            (Image.DecompressionBombWarning, Image.DecompressionBombError),
            match="decompression bomb",
        ):
            transform(job, path, tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable image"),
        (b"Patient notes, not an image.\n", "not a readable image"),
        (random.Random(3).randbytes(4096), "not a readable image"),
    ],
)
def test_unreadable_files_fail_clearly(
    job: Job, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        transform(job, path, tmp_path)


def test_truncated_jpeg_fails_clearly(job: Job, tmp_path: Path) -> None:
    rng = random.Random(4)
    noisy = Image.frombytes("RGB", (300, 200), rng.randbytes(300 * 200 * 3))
    data = io.BytesIO()
    noisy.save(data, "JPEG", quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) * 6 // 10])
    with pytest.raises(ValueError, match="corrupt or truncated image: image file is truncated"):
        transform(job, path, tmp_path)


def test_whole_sample_tree(job: Job, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    paths = make_demo_tree(root, count=12, size=(160, 120), bad=True)
    bad = {root / relpath for relpath in BAD_FILES}
    for path in paths:
        if path in bad:
            with pytest.raises(ValueError, match=r"not a readable image|corrupt or truncated"):
                transform(job, path, tmp_path)
        else:
            out = resized(job, path, tmp_path)
            assert max(out.size) == 64
    assert all(root / relpath in paths for relpath in READABLE_ODDITIES)
