"""The Xray2Xray arm of the study: world-model pretraining on the training split's CTs with
the package's own trainer (views rendered on the fly, EMA targets, the configured losses),
then its probe features (the observed and imagined-view latents,
:func:`~XrayWorldModel.probe.extract_features`), its novel-view PSNR/SSIM and the
correlation of its reconstructed volume with the true CT."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np


def train_config(cfg, manifest: Path, out_dir: Path, cache_dir: Path, device: str):
    """The :class:`~XrayWorldModel.train.TrainConfig` of the world-model arm: the study's
    model and views, the training split's manifest, the matched step budget, no validation
    (nothing of the test split is seen), one final checkpoint."""
    from ..config import DataConfig, OptimConfig, RunConfig, TrainConfig
    w = cfg.world_model
    steps = cfg.steps("xray2xray")
    return TrainConfig(
        model=cfg.model, views=cfg.views,
        data=DataConfig(source=str(manifest), val_count=0, cache_dir=str(cache_dir),
                        grid_size=cfg.data.grid_size, grid_spacing=cfg.data.grid_spacing),
        optim=OptimConfig(batch_size=w.batch_size, steps=steps, lr=w.lr,
                          weight_decay=w.weight_decay, warmup_steps=w.warmup_steps,
                          grad_clip=w.grad_clip),
        run=RunConfig(out_dir=str(out_dir), seed=cfg.seed, device=device,
                      deterministic=cfg.run.deterministic, log_every=min(w.log_every, steps),
                      val_every=0, checkpoint_every=steps, keep_last=1)).validate()


def _loss_records(path: Path):
    """The complete loss records of the trainer's ``metrics.jsonl`` so far."""
    import json
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:       # a line still being written
            continue
        if "loss_total" in rec:
            out.append(rec)
    return out


class _Watcher:
    """Reports the trainer's progress from its ``metrics.jsonl`` about every 5 % of the
    steps, for logs where no progress bar is shown."""

    def __init__(self, path: Path, steps: int, log, interval: float = 5.0):
        import threading
        self.path, self.steps, self.log, self.interval = path, steps, log, interval
        self.every = max(1, steps // 20)
        self.next = self.every
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _report(self) -> None:
        for rec in _loss_records(self.path):
            if rec["step"] >= self.next:
                self.log(f"  world model: step {rec['step']}/{self.steps} "
                         f"loss {rec['loss_total']:.4f}")
                self.next = (rec["step"] // self.every + 1) * self.every

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self._report()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        self._report()


def train_world_model(cfg, manifest: Path, out_dir: Path, cache_dir: Path, device: str,
                      progress: bool = False, log=None):
    """Train; returns (model in eval mode, training record, train config). Without a
    progress bar, ``log`` gets a line about every 5 % of the steps."""
    from contextlib import nullcontext
    from ..train.trainer import Trainer
    tcfg = train_config(cfg, manifest, out_dir, cache_dir, device)
    t0 = time.perf_counter()
    trainer = Trainer(tcfg, progress=progress)
    metrics = Path(out_dir) / "metrics.jsonl"
    watch = (_Watcher(metrics, tcfg.optim.steps, log) if log is not None and not progress
             else nullcontext())
    with watch:
        last = trainer.fit()
    wall = time.perf_counter() - t0
    curve = [[rec["step"], rec["loss_total"]] for rec in _loss_records(metrics)]
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
    from ..probe import extract_features
    return extract_features(model, images[:, None], 0.0, list(imagined))


def novel_views(model, store, train_rows, test_rows, cfg, device=None) -> Dict:
    """Mean PSNR/SSIM of the views predicted from 0 deg at each novel-view angle over the
    test CTs, next to copying the input and the mean training view."""
    from ..data.views import render_views
    from ..train.metrics import evaluate_views
    angles = [float(a) for a in cfg.evaluate.novel_view_angles]
    train_vols = [store.get(r) for r in list(train_rows)[:16]]
    views = render_views(train_vols, cfg.views, angles, device)
    mean_views = {a: views[:, k].mean(0) for k, a in enumerate(angles)}
    test_vols = [store.get(r) for r in test_rows]
    return evaluate_views(model, test_vols, cfg.views, angles, mean_views, device=device)


def volume_prior(store, train_rows, cfg):
    """The world model's volume prior: the mean of the first 16 training CTs (the mean-CT
    baseline is the same mean), on the reconstruction grid."""
    from ..infer.pipeline import _geometry
    from ..infer.prior import VolumePrior
    n = min(cfg.evaluate.volume_size, cfg.views.image_size)
    rows = list(train_rows)[:16]
    return VolumePrior.from_volumes([store.get(r) for r in rows], _geometry(cfg.views, [0.0]),
                                    n, source=f"mean of {len(rows)} training CTs")


def volume_correlation(model, tcfg, store, train_rows, test_rows, cfg,
                       prior=None) -> Optional[Dict]:
    """Pearson r and SSIM of the volume reconstructed from the frontal view against the
    true CT (first ``evaluate.volume_cases`` test CTs), with the mean-CT and copied-frontal
    FDK baselines (:func:`~XrayWorldModel.infer.evaluate.evaluate_volumes`)."""
    n = min(cfg.evaluate.volume_cases, len(test_rows))
    if n == 0:
        return None
    from ..infer.evaluate import evaluate_volumes
    vols = [store.get(r) for r in list(test_rows)[:n]]
    train_vols = [store.get(r) for r in list(train_rows)[:16]]
    return evaluate_volumes(model, {"config": tcfg.to_dict()}, vols, train_vols,
                            cfg.evaluate.volume_size, cfg.evaluate.sweep_step, prior=prior)


def example_row(model, volume, cfg, prior=None) -> Dict[str, np.ndarray]:
    """One figure row for a CT: its frontal DRR (the input), true and predicted lateral
    (90 deg), and the true and reconstructed axial mid-slices (HU)."""
    import torch
    from ..drr import DRRRenderer
    from ..infer.pipeline import _geometry, reconstruct
    from ..infer.prior import centred as centre, resample_like
    s = cfg.views
    centred = centre(volume)
    drr = DRRRenderer(centred, "fast", "cpu", s.mu_water).render(_geometry(s, [0.0, 90.0]))
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
