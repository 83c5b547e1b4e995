"""Writing an inference result: predicted views (NIfTI stack + PNGs), the reconstructed
volume (NIfTI), and ``results.json`` (its schema: ``XrayWorldModel/schemas/results.schema.json``).
Every file is written atomically, ``results.json`` last, so its presence means the rest is whole.
The image files are written side by side (``WRITER_THREADS``): ITK compresses each NIfTI on one
core and releases the GIL meanwhile, so the volume and its standard deviation are compressed at
once where a second core is free. Both are stored in whole HU as int16, as CT is: fractions of a
HU are noise in a reconstruction from one radiograph, and dropping them makes the files a third
the size and their writing twice as fast (4 MB raw each at 128^3, about 2 MB written).
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..conventions import RESULTS_FORMAT
from ..fileutil import atomic_path, sha256_file
from ..io import write_volume
from ..io.drr_stack import write_drr_stack
from ..radiograph import Radiograph
from ..version import __version__
from ..volume import Volume
from .pipeline import InferenceResult
from .trust import disclaimer, output_scores, verdict

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "results.schema.json"
#: Image files written at the same time.
WRITER_THREADS = 2


def consistency_reading(ncc: float) -> str:
    """Plain words for the consistency score (thresholds from the demo model on phantoms)."""
    if ncc >= 0.9:
        return "consistent: the imagined volume re-projects onto the input"
    if ncc >= 0.7:
        return "partly consistent: treat predicted views and volume with caution"
    return "inconsistent: the input is far from what the model knows; do not trust the outputs"


def input_info(path: Path, rad: Radiograph) -> Dict:
    """``results.json``'s ``input``: the radiograph file read from ``path`` as ``rad``."""
    return {"path": str(path), "sha256": sha256_file(path), "view_position": rad.view_position,
            "shape": [int(n) for n in rad.image.shape],
            "spacing_mm": [float(s) for s in rad.spacing],
            "spacing_is_default": bool(rad.spacing_is_default)}


def trust_of(result: InferenceResult) -> Dict:
    """The result's trust verdict (:mod:`.trust`); a result made without one (by hand)
    gets the verdict of its consistency score alone."""
    if result.trust is not None:
        return result.trust
    return verdict(None, result.consistency, result.model_input.problems)


def results_dict(result: InferenceResult, input_info: Optional[Dict] = None,
                 files: Optional[Dict] = None) -> Dict:
    vol = result.volume
    return {
        "format": RESULTS_FORMAT,
        "package_version": __version__,
        "input": input_info or {},
        "model": result.model,
        "preprocessing": result.model_input.to_dict(),
        "views": {"angles_deg": result.view_angles, **(files or {}).get("views", {})},
        "volume": {"shape": list(vol.shape), "spacing_mm": [float(s) for s in vol.spacing],
                   "affine_lps": vol.affine.tolist(), "units": "HU",
                   **(files or {}).get("volume", {})},
        "trust": trust_of(result),
        "scores": output_scores(result.scores, trust_of(result), result.force_scores,
                                disclaimer(result.model)),
        "consistency": {"ncc": result.consistency,
                        "reading": consistency_reading(result.consistency)},
        "uncertainty": result.uncertainty.to_dict() if result.uncertainty is not None else None,
        "timings_s": {k: round(float(v), 4) for k, v in result.timings.items()},
    }


def whole_hu(volume: Volume) -> Volume:
    """``volume`` (HU) rounded to whole HU as int16, clipped to int16's range."""
    info = np.iinfo(np.int16)
    array = np.clip(np.rint(np.asarray(volume.array, dtype=np.float32)), info.min, info.max)
    return Volume(array.astype(np.int16), volume.affine, dict(volume.metadata))


def write_uncertainty(result: InferenceResult, out: Path, files: Dict) -> None:
    """``views_std.nii.gz`` (a DRR stack with the views' geometry) and ``volume_std.nii.gz``
    (the volume's grid), named in ``files`` as ``std_file``; without uncertainty, the std
    files an earlier run left in ``out`` are removed, so none is taken for this run's."""
    for kind, name in _write_uncertainty_files(result, out).items():
        files[kind]["std_file"] = name


def _write_uncertainty_files(result: InferenceResult, out: Path) -> Dict[str, str]:
    """The std files of :func:`write_uncertainty`: {"views" or "volume": file name}."""
    unc = result.uncertainty
    if unc is None:
        for name in ("views_std.nii.gz", "views_std.json", "volume_std.nii.gz"):
            (out / name).unlink(missing_ok=True)
        return {}
    names = {}
    if len(result.view_angles):
        meta = {"kind": "predicted views standard deviation", "model": result.model.get("name"),
                "passes": unc.passes}
        names["views"] = write_drr_stack(unc.views_std, result.view_geometry,
                                         out / "views_std.nii.gz", meta=meta).name
    if unc.volume_std is not None:
        names["volume"] = write_volume(whole_hu(unc.volume_std), out / "volume_std.nii.gz").name
    return names


def _write_views(result: InferenceResult, out: Path) -> Dict:
    stack = write_drr_stack(result.views, result.view_geometry, out / "views.nii.gz",
                            meta={"kind": "predicted views", "model": result.model.get("name")},
                            png=True)
    pngs = sorted(p.name for p in (out / "views_png").glob("*.png")) \
        if (out / "views_png").is_dir() else []
    return {"file": stack.name, "png_dir": "views_png" if pngs else None, "pngs": pngs}


def write_outputs(result: InferenceResult, out_dir, input_info: Optional[Dict] = None) -> Dict:
    """Write every output into ``out_dir``; returns the results dict (also on disk)."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(WRITER_THREADS) as pool:
        views = pool.submit(_write_views, result, out) if len(result.view_angles) else None
        volume = pool.submit(write_volume, whole_hu(result.volume), out / "volume.nii.gz")
        std = pool.submit(_write_uncertainty_files, result, out)
        files: Dict = {"views": views.result()} if views is not None else {}
        files["volume"] = {"file": volume.result().name}
        for kind, name in std.result().items():
            files[kind]["std_file"] = name
    data = results_dict(result, input_info, files)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return data


def load_schema() -> Dict:
    return json.loads(SCHEMA_PATH.read_text())
