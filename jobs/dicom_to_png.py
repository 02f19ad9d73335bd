"""Example job: one frame of every DICOM image as an 8-bit PNG, with a de-identified JSON sidecar.

**Which files.** DICOM is recognised by its content (``DICM`` after a 128-byte preamble), not its
name: archives and PACS exports name files ``IM000001`` or by their UID (``1.2.840...``), so the
job includes every file. A file that is not DICOM (a JPEG, notes, an empty file) fails with
``not a DICOM file``, and a DICOM object without pixel data (a structured report, an RT plan)
with ``no pixel data``, so the manifest shows what else the tree held. Excluded by name:
``DICOMDIR`` (the media index: DICOM, never an image) and file-system clutter. Files without the
preamble (raw ACR-NEMA) are refused: reading them needs ``force=True``, which would also "read"
any garbage.

**Pixels.** The frame ``frame`` is decoded (pydicom; compressed transfer syntaxes need a decoder
plugin, and a missing one is a failure naming the syntax and what to install), then for
MONOCHROME1/2: the Modality LUT or Rescale Slope/Intercept, then the VOI transform onto 0-255:
with ``window="stored"`` the file's first Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID,
PS3.3 C.11.2.1.2), else its VOI LUT Sequence, else min-max; ``window="minmax"`` always min-max.
MONOCHROME1 is inverted so that higher values are brighter. Enhanced multi-frame files keep these
attributes in their functional groups, which are searched too. RGB and YBR become RGB, PALETTE
COLOR goes through its palette; samples wider than 8 bits are scaled. Overlays are not drawn.

**The sidecar is an allow-list.** ``ALLOWED_TAGS`` names the attributes copied to the JSON
(imaging geometry, pixel encoding, display and acquisition parameters); nothing else is, so a
vendor's private tag or a field that a deny-list forgot cannot leak. None of them is in the
Basic Application Level Confidentiality Profile (DICOM PS3.15 Annex E, Table E.1-1), which lists
what identifies a patient: names, IDs, birth dates, addresses, institutions, physicians and
operators, accession numbers, study dates and times, instance UIDs, device serial numbers,
descriptions and comments. Left out although Annex E allows retaining them with an option:
patient characteristics (age, sex, size, weight) and the Study/Series/SOP Instance UIDs, which
would group slices into series. The source path is not written either (paths can hold names),
but mountproc names the members and manifest rows after it. Pixels are not inspected: check
``BurnedInAnnotation`` for text burned into the image (common in ultrasound and secondary
captures).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel, Field
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder  # the submodules: mypy --strict wants them
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array

from mountproc import Context, Job, SourceFile

ALLOWED_TAGS = (
    # what the image shows
    "Modality", "SOPClassUID", "ImageType", "BodyPartExamined", "ViewPosition", "Laterality",
    "ImageLaterality", "PatientPosition", "PresentationIntentType",
    # geometry
    "Rows", "Columns", "NumberOfFrames", "PixelSpacing", "ImagerPixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "ImageOrientationPatient", "ImagePositionPatient",
    # pixel encoding and display
    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter",
    "WindowWidth", "VOILUTFunction", "PresentationLUTShape", "LossyImageCompression",
    "BurnedInAnnotation",
    # acquisition
    "Manufacturer", "ManufacturerModelName", "KVP", "ConvolutionKernel", "MagneticFieldStrength",
    "RepetitionTime", "EchoTime",
)  # fmt: skip
"""The only attributes written to the sidecar (DICOM keywords): none identifies a patient."""

_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

Gray = NDArray[np.uint8]
Window = dict[str, Any]


class Params(BaseModel):
    """Parameters of ``dicom-to-png``."""

    window: Literal["stored", "minmax"] = Field(
        "stored",
        description="stored: the file's own window (or VOI LUT), min-max where it has none; "
        "minmax: always stretch the frame's lowest to highest value over 0-255.",
    )
    max_size: int | None = Field(
        None, ge=8, le=65536, description="Longest side of the PNG; larger frames are shrunk."
    )
    frame: int = Field(
        0, ge=0, description="Frame of a multi-frame file to convert (0: the first)."
    )


job = Job(
    name="dicom-to-png",
    source="/mnt/dicom",
    include=["*"],  # DICOM is told by its content: many archives' files have no extension
    exclude=["DICOMDIR", ".snapshot", ".DS_Store", "Thumbs.db"],
    dataset="dataset://dicom-png/v1",
    params=Params,
    requirements=["pydicom>=3.0"],  # installed by the Valohai step mountproc yaml prints
)


@job.transform
def dicom_to_png(src: SourceFile, ctx: Context[Params]) -> dict[str, Any]:
    """Convert one frame to an 8-bit L or RGB PNG; describe it in a de-identified sidecar."""
    ds = read_dicom(src)
    params = ctx.params
    try:
        image, window = render(ds, params.frame, params.window)
    except ValueError:
        raise
    except Exception as exc:  # pydicom raises many types for a malformed header
        raise ValueError(f"malformed DICOM image: {type(exc).__name__}: {exc}") from exc
    if params.max_size is not None:
        image.thumbnail((params.max_size, params.max_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return {"png": buffer.getvalue(), "dicom.json": sidecar(ds, params.frame, window, image)}


def read_dicom(src: SourceFile) -> Dataset:
    """Read the whole file (decoding only one frame later); not DICOM is a ``ValueError``."""
    try:
        with src.open() as f:
            return dcmread(f, force=False)
    except OSError:
        raise  # the mount's trouble, which mountproc retries and reports
    except InvalidDicomError as exc:
        raise ValueError("not a DICOM file: no 'DICM' marker after a 128-byte preamble") from exc
    except Exception as exc:
        raise ValueError(f"unreadable DICOM file: {type(exc).__name__}: {exc}") from exc


def render(ds: Dataset, frame: int, window: str) -> tuple[Image.Image, Window | None]:
    """The frame as an 8-bit image, and the VOI window used (None for colour)."""
    pixels = decode_frame(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in _GRAY and pixels.ndim == 2:
        gray, used = to_gray(modality_values(pixels, ds, frame), ds, frame, window)
        if photometric == "MONOCHROME1":  # lowest values are white
            gray = 255 - gray
        return Image.fromarray(gray), used
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(pixels, ds))
        return Image.fromarray(scale_to_8bit(rgb, rgb.dtype.itemsize * 8)), None
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB, and YBR that pydicom turned into RGB
        return Image.fromarray(scale_to_8bit(pixels, int(ds.get("BitsStored") or 8))), None
    raise ValueError(f"unsupported Photometric Interpretation {photometric!r}")


def decode_frame(ds: Dataset, frame: int) -> NDArray[Any]:
    """Decode one frame; no pixel data, a missing decoder or bad data is a ``ValueError``."""
    if not any(keyword in ds for keyword in _PIXEL_DATA):
        meta = getattr(ds, "file_meta", Dataset())
        kind = _uid_name(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID"))
        raise ValueError(f"no pixel data: not an image (SOP class: {kind or 'none'})")
    frames = frame_count(ds)
    if frame >= frames:
        raise ValueError(f"frame {frame} was asked for, but the file has {frames} frame(s)")
    _check_size(ds)
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is None:
        raise ValueError("the file meta information has no Transfer Syntax UID")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ValueError(f"pixel data in an unsupported transfer syntax: {syntax.name}") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise ValueError(f"no decoder for {syntax.name} pixel data is installed ({needs})")
    try:
        return np.asarray(pixel_array(ds, index=frame))
    except Exception as exc:
        raise ValueError(f"cannot decode the {syntax.name} pixel data: {exc}") from exc


def frame_count(ds: Dataset) -> int:
    """Number of Frames, 1 when absent."""
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid Number of Frames: {exc}") from exc


def _check_size(ds: Dataset) -> None:
    """A huge frame is a failed file, not a worker out of memory (the limit is Pillow's)."""
    pixels = int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:
        raise ValueError(f"a frame of {pixels} pixels is more than the limit of {limit}")


def modality_values(pixels: NDArray[Any], ds: Dataset, frame: int) -> NDArray[np.float64]:
    """Stored values through the Modality LUT or Rescale Slope/Intercept (e.g. into HU)."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    values = pixels.astype(np.float64)
    slope, intercept = lookup(ds, "RescaleSlope", frame), lookup(ds, "RescaleIntercept", frame)
    if slope is not None and intercept is not None:
        values = values * float(slope) + float(intercept)
    return values


def to_gray(
    values: NDArray[np.float64], ds: Dataset, frame: int, window: str
) -> tuple[Gray, Window]:
    """Apply the stored window or VOI LUT (``window="stored"``), else a min-max window."""
    if window == "stored":
        stored = stored_window(ds, frame)
        if stored is not None:
            center, width, function = stored
            used = {"source": "stored", "center": center, "width": width, "function": function}
            return window_to_8bit(values, center, width, function), used
        if ds.get("VOILUTSequence"):
            return voi_lut_to_8bit(values, ds), {"source": "voi_lut"}
    center, width = minmax_window(values)
    used = {"source": "minmax", "center": center, "width": width, "function": "LINEAR_EXACT"}
    return window_to_8bit(values, center, width, "LINEAR_EXACT"), used


def stored_window(ds: Dataset, frame: int) -> tuple[float, float, str] | None:
    """The file's first Window Center/Width and VOI LUT Function, None if absent or unusable."""
    center = _first(lookup(ds, "WindowCenter", frame))
    width = _first(lookup(ds, "WindowWidth", frame))
    function = str(lookup(ds, "VOILUTFunction", frame) or "LINEAR").strip().upper()
    if center is None or width is None or function not in _VOI_FUNCTIONS:
        return None
    c, w = float(center), float(width)
    minimum = 1.0 if function == "LINEAR" else 0.0  # PS3.3 C.11.2.1.2.1, C.11.2.1.3
    if not (math.isfinite(c) and math.isfinite(w)) or w < minimum or w == 0:
        return None
    return c, w, function


def window_to_8bit(
    values: NDArray[Any], center: float, width: float, function: str = "LINEAR"
) -> Gray:
    """Map values onto 0-255 through a VOI window as DICOM defines it (PS3.3 C.11.2.1.2:
    LINEAR, LINEAR_EXACT, SIGMOID); a window of width 0 (a constant frame) gives black."""
    x = np.asarray(values, dtype=np.float64)
    if width <= 0:
        return np.zeros(x.shape, dtype=np.uint8)
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700.0, 700.0)))
    elif function == "LINEAR_EXACT":
        y = (x - center) / width + 0.5
    elif width <= 1:  # LINEAR of width 1: a threshold
        y = (x > center - 0.5).astype(np.float64)
    else:
        y = (x - (center - 0.5)) / (width - 1) + 0.5
    y = np.clip(np.nan_to_num(y, nan=0.0), 0.0, 1.0)
    return np.rint(y * 255.0).astype(np.uint8)


def minmax_window(values: NDArray[np.float64]) -> tuple[float, float]:
    """The LINEAR_EXACT window from the lowest to the highest finite value."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    low, high = float(finite.min()), float(finite.max())
    return (low + high) / 2.0, high - low


def voi_lut_to_8bit(values: NDArray[np.float64], ds: Dataset) -> Gray:
    """Apply the first VOI LUT, then spread the LUT's output range over 0-255 (its declared bit
    depth is not trusted: 16-bit LUTs holding 12-bit values are common)."""
    entries, first = _lut_domain(ds.VOILUTSequence[0].LUTDescriptor)
    table = np.asarray(apply_voi(np.arange(first, first + entries, dtype=np.int64), ds))
    stored = np.rint(np.nan_to_num(values, nan=0.0)).astype(np.int64)
    out = np.asarray(apply_voi(stored, ds))
    low, high = float(table.min()), float(table.max())
    return window_to_8bit(out, (low + high) / 2.0, high - low, "LINEAR_EXACT")


def _lut_domain(descriptor: Sequence[int]) -> tuple[int, int]:
    return int(descriptor[0]) or 65536, int(descriptor[1])


def scale_to_8bit(samples: NDArray[Any], bits: int) -> NDArray[np.uint8]:
    """Colour samples of ``bits`` bits onto 0-255."""
    if samples.dtype == np.uint8:
        return samples
    top = float(2 ** min(max(bits, 1), 32) - 1)
    scaled = np.clip(samples.astype(np.float64) * (255.0 / top), 0.0, 255.0)
    return np.rint(scaled).astype(np.uint8)


def lookup(ds: Dataset, keyword: str, frame: int) -> Any:
    """An attribute's value at the top level, else in the frame's functional groups (enhanced
    multi-frame: per-frame first, then shared), else None."""
    if keyword in ds:
        return _value(ds, keyword)
    for group in _functional_groups(ds, frame):
        for element in group:
            if element.VR == "SQ" and element.value and keyword in element.value[0]:
                return _value(element.value[0], keyword)
    return None


def _functional_groups(ds: Dataset, frame: int) -> list[Dataset]:
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups


def _value(ds: Dataset, keyword: str) -> Any:
    element = ds[keyword]
    return None if element.VM == 0 else element.value


def _first(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return value[0] if value else None
    return value


def sidecar(ds: Dataset, frame: int, window: Window | None, image: Image.Image) -> dict[str, Any]:
    """The allow-listed attributes of the frame, and what was done to it."""
    tags = {}
    for keyword in ALLOWED_TAGS:
        value = _json_value(_safe_lookup(ds, keyword, frame))
        if value is not None:
            tags[keyword] = value
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    return {
        "dicom": tags,
        "sop_class": _uid_name(ds.get("SOPClassUID")),
        "transfer_syntax": _uid_name(syntax),
        "frame": frame,
        "frames": frame_count(ds),
        "window": window,
        "png": {"mode": image.mode, "width": image.width, "height": image.height},
    }


def _safe_lookup(ds: Dataset, keyword: str, frame: int) -> Any:
    try:
        return lookup(ds, keyword, frame)
    except Exception:  # a malformed value is left out; it does not fail the image
        return None


def _json_value(value: Any) -> Any:
    """A JSON value for numbers, text and lists of them; None for anything else (bytes,
    sequences, person names), which is left out."""
    if isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = [_json_value(v) for v in value]
        return items if items and None not in items else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value.strip() or None
    return None


def _uid_name(uid: Any) -> str | None:
    """A standard UID's name (``CT Image Storage``), else the UID."""
    if uid is None:
        return None
    return str(getattr(uid, "name", "") or uid)
