"""How far does training on synthetic chests carry? The study's world model applied to real
anatomy: DRRs of a real chest CT (the 90-deg view predicted from the 0-deg one, and the
volume reconstructed from the 0-deg one, each next to the same baselines as on phantoms) and
a real radiograph (no truth exists there; the consistency score says how well the imagined
volume re-projects onto what was seen).

The files are named in the config (``evaluate.real_ct``, ``evaluate.real_cxr``); a relative
path is looked up from the working folder, then from the repository root (where
``../shared/data`` sits beside a checkout). A missing file is recorded as skipped, with the
reason, and the rest of the study goes on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..data import PreprocessedCache, RenderedViewSet, resolve_source
from ..infer.domain import domain_reference
from ..infer.evaluate import evaluate_volumes
from ..infer.pipeline import run_inference
from ..io import read_cxr
from ..train.evaluate import score_views

REPO_ROOT = Path(__file__).resolve().parents[2]


def find_file(spec: Optional[str]) -> Tuple[Optional[Path], Optional[str]]:
    """(path, None) when ``spec`` names an existing file, else (None, why it is skipped)."""
    if not spec:
        return None, "not configured"
    p = Path(spec).expanduser()
    for cand in ([p] if p.is_absolute() else [p, REPO_ROOT / p]):
        if cand.is_file():
            return cand.resolve(), None
    return None, f"no file at {spec} (the real data is not on this machine)"


def _real_ct(model, tcfg, cfg, path: Path, cache_dir: Path, train_vols, prior, device) -> Dict:
    item = resolve_source(str(path))[0]
    ct = PreprocessedCache(cache_dir).get(item, tcfg.data.preprocessing())
    angles = [float(a) for a in cfg.evaluate.novel_view_angles]
    mean = RenderedViewSet(train_vols, cfg.views, device).mean_views(angles, len(train_vols))
    views = score_views(model, RenderedViewSet([ct], cfg.views, device), angles, mean)
    volume = evaluate_volumes(model, {"config": tcfg.to_dict()}, [ct], train_vols,
                              cfg.evaluate.volume_size, cfg.evaluate.sweep_step, prior=prior)
    volume.pop("world_model_vs_mean_ct", None)      # one CT: no CI to speak of
    return {"file": path.name, "novel_view": views, "volume": volume, "ct": ct}


def _real_cxr(model, tcfg, cfg, path: Path, frontal_train: np.ndarray, prior) -> Dict:
    card = {"config": tcfg.to_dict(), "domain": domain_reference(frontal_train),
            "name": "study world model"}
    res = run_inference(read_cxr(path), (model, card), views=[90.0],
                        volume_size=cfg.evaluate.volume_size, sweep_step=cfg.evaluate.sweep_step,
                        prior=prior)
    return {"file": path.name, "consistency": float(res.consistency),
            "preprocessing": res.model_input.to_dict(),
            "images": {"input": res.model_input.image, "predicted_lateral": res.views[0],
                       "slice": res.volume.array[:, :, res.volume.shape[2] // 2]}}


def evaluate_real_anatomy(model, tcfg, cfg, cache_dir: Path, train_vols, frontal_train,
                          prior, device) -> Dict:
    """``{"ct": ..., "cxr": ...}``, each the metrics or ``{"skipped": reason}``; arrays for
    the figure are under the private key ``_figure``."""
    out: Dict = {}
    figure: Dict = {}
    path, why = find_file(cfg.evaluate.real_ct)
    if path is None:
        out["ct"] = {"skipped": why}
    else:
        r = _real_ct(model, tcfg, cfg, path, cache_dir, train_vols, prior, device)
        figure["ct"] = r.pop("ct")
        out["ct"] = r
    path, why = find_file(cfg.evaluate.real_cxr)
    if path is None:
        out["cxr"] = {"skipped": why}
    else:
        r = _real_cxr(model, tcfg, cfg, path, frontal_train, prior)
        figure["cxr"] = r.pop("images")
        out["cxr"] = r
    out["_figure"] = figure
    return out


__all__ = ["evaluate_real_anatomy", "find_file"]
