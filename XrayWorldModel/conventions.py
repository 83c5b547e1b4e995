"""The project's shared constants and tiny parsers, in one torch-free, numpy-free place.

The Slicer layer imports this module too, so that the package and the module cannot drift
apart: attenuation of water, file suffixes, format tags, view-position names, the
angle-list syntax and the cache-folder rule each live here and nowhere else.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

from .errors import GeometryError, InputError

#: Linear attenuation of water (1/mm) at a typical chest effective energy: HU -> mu.
MU_WATER = 0.02

#: Default DRR detector: 256 x 256 pixels of 1.6 mm (a 410 mm field, a chest film's size).
DEFAULT_DETECTOR = (256, 256)
DEFAULT_PIXEL_SPACING_MM = 1.6

#: Single-file CT volume formats (a DICOM series is a folder).
CT_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: What a CT input may end with on the command line: a volume file or one DICOM slice.
CT_INPUT_SUFFIXES = CT_VOLUME_SUFFIXES + (".dcm",)
NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: Format tags written into (and checked in) every file the project produces.
STACK_FORMAT = "xray2xray-drr-stack"
#: PNG text chunk in which ``drr --png`` states a view's magnification (sdd / sod), read
#: back by ``read_cxr`` as DICOM's EstimatedRadiographicMagnificationFactor is.
PNG_MAGNIFICATION_KEY = "Magnification"
MODEL_FORMAT = "xray2xray-model"
CHECKPOINT_FORMAT = "xray2xray-checkpoint"
REGISTRY_FORMAT = "xray2xray-registry"
RESULTS_FORMAT = "xray2xray-results"
PROBE_TASK_FORMAT = "xray2xray-probe"
STUDY_RESULTS_FORMAT = "xray2xray-study"

#: DICOM ViewPosition of the four cardinal gantry angles (DESIGN.md angle convention).
VIEW_POSITIONS = {0.0: "PA", 90.0: "LL", 180.0: "AP", 270.0: "RL"}
#: How close (degrees) an angle must be to a cardinal one to carry its view position.
VIEW_POSITION_TOLERANCE_DEG = 1e-3
#: View positions of lateral radiographs, which the frontal-view model refuses.
LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "RLO", "LLO"})

#: Test-time augmentation passes of ``infer``'s uncertainty maps by default (0 turns them
#: off), and the most it takes (``XrayWorldModel/infer/uncertainty.py``).
UNCERTAINTY_PASSES, MAX_UNCERTAINTY_PASSES = 4, 1024

#: Probabilities are stored clipped to [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR] (the raw
#: logit beside them) and shown with two decimals, "> 0.99" / "< 0.01" at the ends: never as
#: 0 or 1 (:func:`format_probability`).
PROBABILITY_FLOOR = 1e-3

#: Environment variables that move the caches and extend the model registry.
CACHE_ENV = "XRAY2XRAY_CACHE"
MODELS_ENV = "XRAY2XRAY_MODELS"
REGISTRY_ENV = "XRAY2XRAY_REGISTRY"


def angular_distance(a: float, b: float) -> float:
    """Distance in degrees between two gantry angles on the circle (0..180)."""
    d = abs(float(a) - float(b)) % 360.0
    return min(d, 360.0 - d)


def view_position(angle: float) -> str:
    """DICOM ViewPosition of a gantry angle (PA 0, LL 90, AP 180, RL 270), else ''."""
    for ref, name in VIEW_POSITIONS.items():
        if angular_distance(angle, ref) < VIEW_POSITION_TOLERANCE_DEG:
            return name
    return ""


def parse_angles(text: str, allow_empty: bool = False) -> Tuple[float, ...]:
    """``"0,90,180"`` -> ``(0.0, 90.0, 180.0)`` degrees, with a clear error on bad input."""
    try:
        values = tuple(float(t) for t in str(text).replace(" ", "").split(",") if t != "")
    except ValueError:
        raise GeometryError(f"angles must be comma-separated numbers in degrees, got {text!r}")
    if not values and not allow_empty:
        raise GeometryError("no angles given")
    return values


def uncertainty_passes(value) -> int:
    """``--uncertainty`` / ``uncertainty=``: 0 (off) or a whole number of passes from 2 (a
    standard deviation needs two) to :data:`MAX_UNCERTAINTY_PASSES`, as an int."""
    try:
        n = int(value)
        whole = not isinstance(value, bool) and n == float(value)
    except (TypeError, ValueError):
        n, whole = -1, False
    if not whole or n < 0 or n == 1 or n > MAX_UNCERTAINTY_PASSES:
        raise InputError(f"the uncertainty passes (--uncertainty) must be 0 (off) or a whole "
                         f"number from 2 to {MAX_UNCERTAINTY_PASSES}, got {value!r}")
    return n


def clip_probability(p):
    """``p`` clipped to [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR]; None stays None."""
    return None if p is None else min(max(float(p), PROBABILITY_FLOOR), 1.0 - PROBABILITY_FLOOR)


def format_probability(p) -> str:
    """A probability as text with honest precision: "0.37", "> 0.99", "< 0.01", "n/a"."""
    if p is None:
        return "n/a"
    p = float(p)
    if p > 0.99:
        return "> 0.99"
    if p < 0.01:
        return "< 0.01"
    return f"{p:.2f}"


def strip_ct_suffix(name: str) -> str:
    """A CT file's name without its volume suffix (``chest.nii.gz`` -> ``chest``)."""
    for suffix in CT_INPUT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def platform_cache_dir() -> Path:
    """The platform's user cache folder for xray2xray (no environment override).

    Uses platformdirs where installed (the package requires it); Slicer's Python may lack
    it, so the same rule is spelled out for the three platforms as a fallback.
    """
    try:
        from platformdirs import user_cache_dir as platformdirs_cache_dir
        return Path(platformdirs_cache_dir("xray2xray"))
    except ImportError:
        if sys.platform == "win32":
            base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
            return base / "xray2xray" / "xray2xray" / "Cache"
        if sys.platform == "darwin":
            return Path.home() / "Library" / "Caches" / "xray2xray"
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xray2xray"


def preprocessed_cache_dir() -> Path:
    """Where preprocessed training CTs go: ``$XRAY2XRAY_CACHE``, else the platform cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return platform_cache_dir()


def models_cache_dir() -> Path:
    """Where downloaded and imported models live: ``$XRAY2XRAY_MODELS``, else
    ``<platform cache>/models``."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    return platform_cache_dir() / "models"


#: Magnifications taken from a header or a user: (low, high]. Above 1.0, which headers write
#: when they do not know; up to 2, which covers a chest radiograph (1.05-1.3) and the DRRs of
#: any usual geometry (SDD / SOD).
PLAUSIBLE_MAGNIFICATION = (1.0, 2.0)


def check_stated_geometry(pixel_spacing: Optional[float] = None,
                          magnification: Optional[float] = None) -> None:
    """:class:`InputError` for a pixel spacing (mm at the detector) or a magnification that a
    user states (``infer --pixel-spacing/--magnification``, the Slicer module's fields) and
    that cannot be right; here so that the CLI and the Slicer layer refuse the same values."""
    if pixel_spacing is not None and number_within(pixel_spacing, 0.0) is None:
        raise InputError(f"a pixel spacing must be a positive number of mm, got {pixel_spacing!r}")
    low, high = PLAUSIBLE_MAGNIFICATION
    if magnification is not None and number_within(magnification, low, high) is None:
        raise InputError(f"a magnification lies above {low:g} and at most {high:g} (a PA "
                         f"chest at 1800 mm: 1.08; a portable AP at 1000 mm: about 1.16; a "
                         f"DRR: its SDD / SOD), got {magnification!r}")


def number_within(value, low: float = -math.inf, high: float = math.inf) -> Optional[float]:
    """``value`` (a number or its text, from a header, a CSV cell or metadata) as a float when
    it is a finite number in (``low``, ``high``], else None: what readers of optional
    numeric fields do with a missing, garbled or placeholder entry."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and low < v <= high else None
