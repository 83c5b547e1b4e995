"""The Xray2Xray arm of the study: world-model pretraining on the training split's CTs with
the package's own trainer (views rendered on the fly, EMA targets, the configured losses),
then its probe features (the observed and imagined-view latents,
:func:`~XrayWorldModel.probe.extract_features`), its novel-view PSNR/SSIM and the
correlation of its reconstructed volume with the true CT."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..config import DataConfig, OptimConfig, RunConfig, TrainConfig
from ..data import RenderedViewSet
from ..drr import DRRRenderer
from ..infer.evaluate import evaluate_volumes
from ..infer.pipeline import isocentric_geometry, reconstruct
from ..infer.prior import VolumePrior, centred as centre, resample_like
from ..probe import extract_features
from ..train.evaluate import score_views
from ..train.trainer import Trainer


def train_config(cfg, manifest: Path, out_dir: Path, cache_dir: Path, device: str):
    """The :class:`~XrayWorldModel.train.TrainConfig` of the world-model arm: the study's
    model and views, the training split's manifest, the matched step budget, no validation
    (nothing of the test split is seen), one final checkpoint."""
    w = cfg.world_model
    steps = cfg.steps("xray2xray")
    return TrainConfig(
        model=cfg.model, views=cfg.views,
        data=DataConfig(source=str(manifest), val_count=0, cache_dir=str(cache_dir),
                        grid_size=cfg.data.grid_size, grid_spacing=cfg.data.grid_spacing,
                        centre_on=cfg.data.centre_on),
        optim=OptimConfig(batch_size=w.batch_size, steps=steps, lr=w.lr,
                          weight_decay=w.weight_decay, warmup_steps=w.warmup_steps,
                          grad_clip=w.grad_clip),
        run=RunConfig(out_dir=str(out_dir), seed=cfg.seed, device=device,
                      deterministic=cfg.run.deterministic, log_every=min(w.log_every, steps),
                      val_every=0, checkpoint_every=steps, keep_last=1)).validate()


class _LossLog:
    """The trainer's ``on_log``: keeps the loss records (the loss curve) and, when given a
    ``log``, reports about every 5 % of the steps, for logs where no progress bar is shown."""

    def __init__(self, steps: int, log: Optional[Callable[[str], None]]):
        self.steps, self.log = steps, log
        self.every = max(1, steps // 20)
        self.next = self.every
        self.records: List[Dict] = []

    def __call__(self, rec: Dict) -> None:
        if "loss_total" not in rec:
            return
        self.records.append(rec)
        if self.log is not None and rec["step"] >= self.next:
            self.log(f"  world model: step {rec['step']}/{self.steps} "
                     f"loss {rec['loss_total']:.4f}")
            self.next = (rec["step"] // self.every + 1) * self.every


def train_world_model(cfg, manifest: Path, out_dir: Path, cache_dir: Path, device: str,
                      progress: bool = False, log=None):
    """Train; returns (model in eval mode, training record, train config). Without a
    progress bar, ``log`` gets a line about every 5 % of the steps."""
    tcfg = train_config(cfg, manifest, out_dir, cache_dir, device)
    t0 = time.perf_counter()
    losses = _LossLog(tcfg.optim.steps, log if not progress else None)
    trainer = Trainer(tcfg, progress=progress, on_log=losses)
    last = trainer.fit()
    wall = time.perf_counter() - t0
    curve = [[rec["step"], rec["loss_total"]] for rec in losses.records]
    model = trainer.model.eval()
    w = cfg.world_model
    info = {"steps": tcfg.optim.steps, "batch_size": w.batch_size,
            "encoder_samples": tcfg.optim.steps * w.batch_size,
            "views_per_sample": 1 + cfg.views.targets_per_context,
            "final_loss": float(last.get("total", float("nan"))),
            "losses": {k: float(v) for k, v in last.items()}, "loss_curve": curve,
            "wall_s": wall, "checkpoints": str(Path(out_dir) / "checkpoints"),
            "parameters": model.num_parameters()}
    return model, info, tcfg


def world_model_features(model, images: np.ndarray, imagined: Sequence[float]) -> np.ndarray:
    """Probe features of frontal DRRs [N, H, W]: observed and imagined-view latents."""
    return extract_features(model, images[:, None], 0.0, list(imagined))


def novel_views(model, store, train_rows, test_rows, cfg, device=None) -> Dict:
    """Mean PSNR/SSIM of the views predicted from 0 deg at each novel-view angle over the
    test CTs, next to copying the input and the mean training view."""
    angles = [float(a) for a in cfg.evaluate.novel_view_angles]
    train = RenderedViewSet([store.get(r) for r in list(train_rows)[:16]], cfg.views, device)
    test = RenderedViewSet([store.get(r) for r in test_rows], cfg.views, device)
    return score_views(model, test, angles, train.mean_views(angles))


def volume_prior(store, train_rows, cfg):
    """The world model's volume prior: the mean of the first 16 training CTs (the mean-CT
    baseline is the same mean), on the reconstruction grid."""
    n = min(cfg.evaluate.volume_size, cfg.views.image_size)
    rows = list(train_rows)[:16]
    return VolumePrior.from_volumes([store.get(r) for r in rows], isocentric_geometry(cfg.views, [0.0]),
                                    n, source=f"mean of {len(rows)} training CTs")


def volume_correlation(model, tcfg, store, train_rows, test_rows, cfg,
                       prior=None) -> Optional[Dict]:
    """Pearson r and SSIM of the volume reconstructed from the frontal view against the
    true CT (first ``evaluate.volume_cases`` test CTs), with the mean-CT and copied-frontal
    FDK baselines (:func:`~XrayWorldModel.infer.evaluate.evaluate_volumes`)."""
    n = min(cfg.evaluate.volume_cases, len(test_rows))
    if n == 0:
        return None
    vols = [store.get(r) for r in list(test_rows)[:n]]
    train_vols = [store.get(r) for r in list(train_rows)[:16]]
    return evaluate_volumes(model, {"config": tcfg.to_dict()}, vols, train_vols,
                            cfg.evaluate.volume_size, cfg.evaluate.sweep_step, prior=prior)


def example_row(model, volume, cfg, prior=None) -> Dict[str, np.ndarray]:
    """One figure row for a CT: its frontal DRR (the input), true and predicted lateral
    (90 deg), and the true and reconstructed axial mid-slices (HU)."""
    s = cfg.views
    centred = centre(volume)
    drr = DRRRenderer(centred, "fast", "cpu", s.mu_water).render(isocentric_geometry(s, [0.0, 90.0]))
    dev = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(drr[:1]))[None].to(dev)
    with torch.no_grad():
        state = model.encode(x, torch.zeros(1, device=dev))
        lateral = model.predict_view(x, 0.0, 90.0).float().cpu().numpy()[0, 0]
        recon = reconstruct(model, state, s, cfg.evaluate.volume_size, cfg.evaluate.sweep_step,
                            prior=prior)
    true = resample_like(centred, recon)
    k = recon.shape[2] // 2
    return {"frontal": drr[0], "true_lateral": drr[1], "predicted_lateral": lateral,
            "true_slice": true[:, :, k], "reconstructed_slice": recon.array[:, :, k]}


__all__ = ["train_config", "train_world_model", "world_model_features", "novel_views",
           "volume_correlation", "volume_prior", "example_row"]
