"""Tests of the example job ``jobs/dicom_to_png.py`` on pydicom's real sample files: called
directly, and through the real CLI over a tree of good, broken and non-DICOM files."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from helpers import REPO, read_manifest, run_cli
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut, apply_windowing
from pydicom.uid import JPEGLSLossless

from mountproc._errors import SettingsError
from mountproc._job import Job
from mountproc._jobfile import load_job, read_job_file

JOB_FILE = REPO / "jobs" / "dicom_to_png.py"
JOB_NAME = "dicom-to-png"

# Attributes that identify a patient, a visit, a person or a device (DICOM PS3.15 Table E.1-1):
# none may be a key of a sidecar, and the allow-list must name none of them.
IDENTIFYING = {
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
    "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers",
    "OtherPatientIDs", "OtherPatientNames", "PatientComments", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "MediaStorageSOPInstanceUID", "FrameOfReferenceUID", "DeviceSerialNumber", "StationName",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
    "AcquisitionTime", "ContentTime", "AcquisitionDateTime", "StudyDescription",
    "SeriesDescription", "ProtocolName", "ImageComments", "RequestingPhysician",
}  # fmt: skip
# Source attributes whose values must not appear anywhere in a sidecar's text.
PHI_VALUES = (
    "PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "OperatorsName", "AccessionNumber", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "StudyDate",
)  # fmt: skip

# The tree: where each sample goes (as archives name them: no extension, UIDs) -> pydicom file.
GOOD = {
    "ct/CT_small.dcm": "CT_small.dcm",  # CT, Rescale to HU, no stored window: min-max
    "mr/MR_small.dcm": "MR_small.dcm",  # MR, stored window
    "mr/1.2.840.113619.2.55.3.604688119.969.1": "MR_small_RLE.dcm",  # RLE, a UID for a name
    "cr/IM000001": "6154",  # CR, MONOCHROME1, Rescale Slope 0.684, no extension
    "us/rgb.dcm": "examples_rgb_color.dcm",  # RGB
    "us/cine.DICOM": "examples_ybr_color.dcm",  # 30 frames, YBR_FULL_422, JPEG baseline
    "us/palette.dcm": "examples_palette.dcm",  # PALETTE COLOR
    "sc/rgb16.dcm": "SC_rgb_rle_16bit.dcm",  # 16-bit RGB
    "rt/dose.dcm": "rtdose.dcm",  # 15 frames of 32-bit samples
    "seg/liver.dcm": "liver_1frame.dcm",  # 1-bit, geometry in the functional groups
}
BAD_SAMPLES = {
    "sr/report.dcm": ("reportsi.dcm", r"no pixel data: not an image \(SOP class: Basic Text SR"),
    "rt/plan.dcm": ("rtplan.dcm", r"no pixel data: not an image \(SOP class: RT Plan Storage\)"),
    "mr/truncated.dcm": ("MR_truncated.dcm", r"pixel data is less than expected \(8130 vs 8192"),
}
NOT_DICOM = r"not a DICOM file: no 'DICM' marker after a 128-byte preamble"
CODEC = {"mr/jpeg-ls.dcm": "MR_small_jpeg_ls_lossless.dcm"}  # fails unless a decoder is installed


@pytest.fixture(scope="module")
def job() -> Job:
    return load_job(read_job_file(JOB_FILE))


@pytest.fixture(scope="module")
def module(job: Job) -> ModuleType:
    assert job.transform_fn is not None
    return sys.modules[job.transform_fn.__module__]


def sample(name: str) -> Path:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return Path(path)


def transform(job: Job, path: Path, tmp_path: Path, **params: Any) -> dict[str, Any]:
    """The outputs of one file, as they go into the tar; the sidecar parsed back."""
    out: dict[str, Any] = job.apply(path, **params)
    assert set(out) == {"png", "dicom.json"}
    out["dicom.json"] = json.loads(out["dicom.json"])
    return out


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert image.mode in ("L", "RGB")
    return image


def converted(job: Job, name: str, tmp_path: Path, **params: Any) -> tuple[Image.Image, Any]:
    out = transform(job, sample(name), tmp_path, **params)
    return png(out["png"]), out["dicom.json"]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def test_declaration(job: Job) -> None:
    assert job.name == JOB_NAME
    assert job.source == "/mnt/dicom"
    assert job.dataset == "dataset://dicom-png/v1"
    assert job.include == ("*",)
    assert "DICOMDIR" in job.exclude


def test_params_defaults_and_bounds(job: Job) -> None:
    assert job.parse_params({}).model_dump() == {"window": "stored", "max_size": None, "frame": 0}
    assert job.parse_params({"max_size": "256"}).model_dump()["max_size"] == 256
    with pytest.raises(SettingsError, match="window"):
        job.parse_params({"window": "auto"})
    with pytest.raises(SettingsError, match="max_size"):
        job.parse_params({"max_size": 4})
    with pytest.raises(SettingsError, match="frame"):
        job.parse_params({"frame": -1})


def test_allow_list_is_real_keywords_and_none_identifying(module: ModuleType) -> None:
    allowed = set(module.ALLOWED_TAGS)
    assert all(tag_for_keyword(keyword) is not None for keyword in allowed)  # no typos
    assert not allowed & IDENTIFYING


# --- windowing -------------------------------------------------------------------------------


def test_linear_window_follows_the_standard(module: ModuleType) -> None:
    # PS3.3 C.11.2.1.2.1, center 40 width 400: x <= -160 is black, x > 239 is white
    values = np.array([-1000.0, -160.0, -159.0, 39.5, 239.0, 240.0, 3000.0])
    out = module.window_to_8bit(values, 40.0, 400.0, "LINEAR")
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 1, 128, 255, 255, 255]


def test_linear_exact_and_sigmoid_windows(module: ModuleType) -> None:
    values = np.array([-1e6, -50.0, 0.0, 50.0, 1e6])
    assert module.window_to_8bit(values, 0.0, 100.0, "LINEAR_EXACT").tolist() == [
        0, 0, 128, 255, 255,
    ]  # fmt: skip
    sigmoid = module.window_to_8bit(values, 0.0, 100.0, "SIGMOID").tolist()  # no overflow warning
    assert sigmoid[0] == 0
    assert sigmoid[2] == 128
    assert sigmoid[4] == 255
    assert sigmoid[1] < 128 < sigmoid[3]


def test_width_one_thresholds_and_constant_frames_are_black(module: ModuleType) -> None:
    values = np.array([9.0, 9.5, 10.0, 11.0])
    assert module.window_to_8bit(values, 10.0, 1.0, "LINEAR").tolist() == [0, 0, 255, 255]
    flat = np.full((4, 4), 7.0)
    center, width = module.minmax_window(flat)
    assert module.window_to_8bit(flat, center, width, "LINEAR_EXACT").max() == 0


def test_minmax_ignores_nan_and_inf(module: ModuleType) -> None:
    values = np.array([np.nan, -np.inf, 10.0, 20.0, 30.0, np.inf])
    center, width = module.minmax_window(values)
    assert (center, width) == (20.0, 20.0)
    out = module.window_to_8bit(values, center, width, "LINEAR_EXACT").tolist()
    assert out[2:5] == [0, 128, 255]
    assert out[0] == 0  # NaN is black


@pytest.mark.parametrize("name", ["MR_small.dcm", "6154", "examples_overlay.dcm"])
def test_stored_window_agrees_with_pydicom(module: ModuleType, name: str) -> None:
    """Our window onto 0-255 equals pydicom's apply_windowing rescaled from its output range."""
    ds = dcmread(sample(name))
    stored = ds.pixel_array
    low = 0 if ds.PixelRepresentation == 0 else -(2 ** (ds.BitsStored - 1))
    high = low + 2**ds.BitsStored - 1
    if "RescaleSlope" in ds:
        low, high = (v * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for v in (low, high))
    reference = apply_windowing(apply_modality_lut(stored, ds), ds)
    expected = np.rint((reference - low) / (high - low) * 255.0)
    window = module.stored_window(ds, 0)
    assert window is not None
    ours = module.window_to_8bit(module.modality_values(stored, ds, 0), *window)
    assert np.array_equal(ours, expected)


# --- the transform on real files --------------------------------------------------------------


def test_ct_is_rescaled_and_min_max_windowed(job: Job, tmp_path: Path) -> None:
    image, meta = converted(job, "CT_small.dcm", tmp_path)
    assert (image.mode, image.size) == ("L", (128, 128))
    assert meta["dicom"]["Modality"] == "CT"
    assert meta["dicom"]["RescaleIntercept"] == -1024.0
    assert meta["dicom"]["PixelSpacing"] == [0.661468, 0.661468]
    assert meta["sop_class"] == "CT Image Storage"
    assert meta["window"]["source"] == "minmax"  # the file stores no window
    assert pixels(image).min() == 0
    assert pixels(image).max() == 255


def test_stored_window_or_min_max_on_request(job: Job, tmp_path: Path) -> None:
    stored, meta = converted(job, "MR_small.dcm", tmp_path)
    assert meta["window"] == {"source": "stored", "center": 600.0, "width": 1600.0,
                              "function": "LINEAR"}  # fmt: skip
    stretched, meta = converted(job, "MR_small.dcm", tmp_path, window="minmax")
    assert meta["window"]["source"] == "minmax"
    assert (pixels(stretched).min(), pixels(stretched).max()) == (0, 255)
    assert pixels(stored).min() > 0  # the lowest value, 127, is above the window's bottom, -200


def test_monochrome1_is_inverted(job: Job, tmp_path: Path) -> None:
    ds = dcmread(sample("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1.dcm"
    ds.save_as(inverted)
    normal, _ = converted(job, "MR_small.dcm", tmp_path)
    out = transform(job, inverted, tmp_path)
    assert np.array_equal(pixels(png(out["png"])), 255 - pixels(normal))


def test_voi_lut_sequence_is_applied_and_spread(job: Job, tmp_path: Path) -> None:
    """A VOI LUT declared 16-bit that holds 12-bit values (common) still spans 0-255."""
    ds = dcmread(sample("CT_small.dcm"))  # no Window Center/Width
    item = Dataset()
    item.add_new("LUTDescriptor", "SS", [4096, -1024, 16])  # 4096 entries from -1024 HU
    item.add_new("LUTData", "US", [4095 - i for i in range(4096)])  # an inverting ramp
    ds.VOILUTSequence = [item]
    path = tmp_path / "voi-lut.dcm"
    ds.save_as(path)
    out = transform(job, path, tmp_path)
    assert out["dicom.json"]["window"] == {"source": "voi_lut"}
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.rint((4095.0 - (hu + 1024.0)) / 4095.0 * 255.0)
    assert np.abs(pixels(png(out["png"])) - expected).max() <= 1


def test_ybr_jpeg_becomes_the_same_rgb(job: Job, tmp_path: Path) -> None:
    ybr, meta = converted(job, "SC_rgb_jpeg_dcmtk.dcm", tmp_path)
    rgb, _ = converted(job, "SC_rgb_rle.dcm", tmp_path)
    assert meta["dicom"]["PhotometricInterpretation"] == "YBR_FULL"
    assert ybr.mode == "RGB"
    assert meta["window"] is None
    assert np.abs(pixels(ybr) - pixels(rgb)).max() <= 8  # lossy JPEG of the same picture


@pytest.mark.parametrize("name", ["SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"])
def test_wide_rgb_is_scaled_to_8_bits(job: Job, tmp_path: Path, name: str) -> None:
    wide, _ = converted(job, name, tmp_path)
    narrow, _ = converted(job, "SC_rgb_rle.dcm", tmp_path)
    assert np.abs(pixels(wide) - pixels(narrow)).max() <= 1


def test_palette_color_becomes_rgb_and_max_size_shrinks(job: Job, tmp_path: Path) -> None:
    image, meta = converted(job, "examples_palette.dcm", tmp_path, max_size=200)
    assert image.mode == "RGB"
    assert image.width == 200
    assert abs(image.height - 350 * 200 / 800) <= 1
    assert meta["png"] == {"mode": "RGB", "width": image.width, "height": image.height}
    assert (meta["dicom"]["Columns"], meta["dicom"]["Rows"]) == (800, 350)


def test_frame_picks_a_frame_of_a_multi_frame_file(job: Job, tmp_path: Path) -> None:
    first, meta = converted(job, "rtdose.dcm", tmp_path)
    later, later_meta = converted(job, "rtdose.dcm", tmp_path, frame=7)
    assert (meta["frames"], meta["frame"], later_meta["frame"]) == (15, 0, 7)
    assert not np.array_equal(pixels(first), pixels(later))
    with pytest.raises(ValueError, match=r"frame 15 was asked for, but the file has 15 frame"):
        transform(job, sample("rtdose.dcm"), tmp_path, frame=15)


def test_functional_groups_supply_the_geometry(job: Job, tmp_path: Path) -> None:
    ds = dcmread(sample("liver_1frame.dcm"))
    assert "PixelSpacing" not in ds  # only in the Shared Functional Groups
    _, meta = converted(job, "liver_1frame.dcm", tmp_path)
    assert meta["dicom"]["PixelSpacing"] == [0.810547, 0.810547]


@pytest.mark.parametrize("content", [b"", b"Patient notes, not an image.\n", b"\xff\xd8\xff"])
def test_not_dicom_fails_clearly(job: Job, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "IM0001"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=NOT_DICOM):
        transform(job, path, tmp_path)


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # as on a worker
def test_garbage_after_the_dicom_marker_fails_clearly(job: Job, tmp_path: Path) -> None:
    path = tmp_path / "IM0002"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    with pytest.raises(ValueError, match=r"no pixel data: not an image \(SOP class: none\)"):
        transform(job, path, tmp_path)


@pytest.mark.parametrize(("relpath", "spec"), sorted(BAD_SAMPLES.items()))
def test_broken_dicom_fails_clearly(
    job: Job, tmp_path: Path, relpath: str, spec: tuple[str, str]
) -> None:
    name, message = spec
    with pytest.raises(ValueError, match=message):
        transform(job, sample(name), tmp_path)


# --- the real CLI over a real tree ------------------------------------------------------------


def _codec_available() -> bool:
    return bool(get_decoder(JPEGLSLossless).is_available)


def build_tree(root: Path) -> None:
    """Copy the samples and a DICOMDIR into ``root``; add a truncated copy and non-DICOM files."""
    sources = {**GOOD, **{rel: name for rel, (name, _) in BAD_SAMPLES.items()}, **CODEC}
    for relpath, name in {**sources, "DICOMDIR": "DICOMDIR"}.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample(name), root / relpath)
    ct = sample("CT_small.dcm").read_bytes()
    (root / "ct/cut-short").write_bytes(ct[: len(ct) * 2 // 3])  # ends inside the pixel data
    (root / "misc").mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "misc/photo.jpg", "JPEG")
    (root / "misc/notes.txt").write_text("Patient notes, not an image.\n")
    (root / "misc/empty.dcm").write_bytes(b"")


def expected_failures() -> dict[str, str]:
    failures = {rel: message for rel, (_, message) in BAD_SAMPLES.items()}
    failures["ct/cut-short"] = r"pixel data is less than expected \(\d+ vs 32768 bytes\)"
    for relpath in ("misc/photo.jpg", "misc/notes.txt", "misc/empty.dcm"):
        failures[relpath] = NOT_DICOM
    if not _codec_available():
        failures["mr/jpeg-ls.dcm"] = (
            r"no decoder for JPEG-LS Lossless Image Compression pixel data is installed \(.*"
            r"pylibjpeg"
        )
    return failures


def tar_contents(outputs: Path) -> dict[str, bytes]:
    """Every member of every published tar, by member name."""
    out: dict[str, bytes] = {}
    for tar in sorted(outputs.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                handle = tf.extractfile(member)
                assert handle is not None
                out[member.name] = handle.read()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real ``mountproc run`` of the job over the tree, shared by the tests below."""
    base = tmp_path_factory.mktemp("dicom-run")
    src, out = base / "src", base / "out"
    build_tree(src)
    proc = run_cli(
        "run", JOB_FILE, "--source", src, "--outputs", out, "--max-failures", "100%",
        "--shard-max-files", "6", "--workers", "2", cwd=base,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {row["path"]: row for row in read_manifest(out, JOB_NAME)}
    return {"src": src, "out": out, "rows": rows, "tars": tar_contents(out)}


def good_paths() -> list[str]:
    return sorted(GOOD) + (sorted(CODEC) if _codec_available() else [])


@pytest.mark.cluster
def test_every_file_is_accounted_for(run: dict[str, Any]) -> None:
    rows = run["rows"]
    ok = {path for path, row in rows.items() if row["status"] == "ok"}
    failed = {path for path, row in rows.items() if row["status"] == "failed"}
    assert ok == set(good_paths())
    assert failed == set(expected_failures())
    assert rows["DICOMDIR"]["status"] == "excluded"
    assert rows["DICOMDIR"]["error"] == "not selected by include/exclude patterns"


@pytest.mark.cluster
def test_failures_have_readable_reasons(run: dict[str, Any]) -> None:
    for relpath, message in expected_failures().items():
        row = run["rows"][relpath]
        assert row["error"].startswith("ValueError: "), row["error"]
        assert re.search(message, row["error"]), (relpath, row["error"])
        assert not row["members"]


@pytest.mark.cluster
def test_every_good_file_is_an_8bit_png_of_its_size(run: dict[str, Any]) -> None:
    for relpath in good_paths():
        members = list(run["rows"][relpath]["members"])
        assert [m.rpartition("/")[2].split(".", 1)[1] for m in members] == [
            "dicom.json",
            "json",
            "png",
        ]
        image = png(run["tars"][members[2]])
        ds = dcmread(run["src"] / relpath)
        assert image.size == (ds.Columns, ds.Rows), relpath
        colour = ds.PhotometricInterpretation not in ("MONOCHROME1", "MONOCHROME2")
        assert image.mode == ("RGB" if colour else "L"), relpath
        meta = json.loads(run["tars"][members[0]])
        assert meta["png"] == {"mode": image.mode, "width": ds.Columns, "height": ds.Rows}


def phi_values(ds: Dataset) -> set[str]:
    """The identifying values of a source file worth searching for (4+ characters), and the
    parts of its person names."""
    values: set[str] = set()
    for keyword in PHI_VALUES:
        text = str(ds.get(keyword) or "")
        values |= {text, *text.split("^")}
    vendor = f"{ds.get('Manufacturer', '')} {ds.get('ManufacturerModelName', '')}"
    # MR_small's Institution Name is its vendor's name (TOSHIBA): that is the vendor's, not PHI
    return {v for v in values if len(v.strip()) >= 4 and v not in vendor}


def keys_of(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from keys_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from keys_of(item)


@pytest.mark.cluster
def test_sidecars_hold_no_identifying_tag_or_value(run: dict[str, Any], module: ModuleType) -> None:
    searched = 0
    for relpath in good_paths():
        member = next(m for m in run["rows"][relpath]["members"] if m.endswith(".dicom.json"))
        text = run["tars"][member].decode("utf-8")
        meta = json.loads(text)
        assert not set(keys_of(meta)) & IDENTIFYING, relpath
        assert set(meta["dicom"]) <= set(module.ALLOWED_TAGS)
        assert relpath not in text
        assert relpath.rsplit("/", 1)[-1] not in text
        for value in phi_values(dcmread(run["src"] / relpath)):
            assert value not in text, (relpath, value)
            searched += 1
    assert searched >= 40  # the samples do carry names, IDs, dates and UIDs to leak


@pytest.mark.cluster
def test_failure_reasons_hold_no_identifying_value(run: dict[str, Any]) -> None:
    for relpath in BAD_SAMPLES:
        error = run["rows"][relpath]["error"]
        for value in phi_values(dcmread(run["src"] / relpath)):
            assert value not in error, (relpath, value)
