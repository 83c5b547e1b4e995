"""The training loop: views rendered on the fly from CTs, the world-model losses, AdamW
with warmup + cosine, gradient clipping, EMA targets, validation, checkpoints and exact
resume, on one device or many through torchrun (DistributedDataParallel).

Batches are planned globally: step ``s`` draws its CTs from a generator seeded by
``(seed, s)`` and sample ``b`` its views from ``(seed, s, b)``. Each rank renders its own
slice of that batch, so a run's data do not depend on the number of ranks or on where it
was resumed, which is what makes resume exact and N ranks match one process.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..version import __version__
from ..data import PreprocessedCache, ViewRenderer, resolve_source
from ..data.cache import CTLoadWarning, VolumeProvider  # noqa: F401  (CTLoadWarning re-exported)
from ..data.stacks import (DRRStackSet, evaluate_stacks, is_stack_source, list_stacks,
                           mean_stack_views)
from ..drr import resolve_device
from ..errors import InputError, XrayWorldModelError
from ..models import EMAEncoder, PixelLoss, WorldModel, world_model_losses
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..data.views import render_views
from .metrics import evaluate_views


class Objective(nn.Module):
    """The world-model losses as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: WorldModel, ema: EMAEncoder):
        super().__init__()
        self.model, self.ema = model, ema
        self.pixel_loss = PixelLoss(model.config.ssim_weight)

    def forward(self, context, context_angle, targets, deltas):
        return world_model_losses(self.model, self.ema, context, context_angle, targets, deltas,
                                  self.pixel_loss)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine down to 1% at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * frac))


def _dist_setup(cfg: TrainConfig):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        want_cuda = cfg.run.device in ("auto", "cuda") and torch.cuda.is_available()
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if cfg.run.device in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = resolve_device("cpu" if cfg.run.device == "auto" else cfg.run.device)
    if world > 1 and device.type == "cpu":   # share the cores between ranks
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        torch.set_num_threads(threads)
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return rank, world, device


def model_tensors(model: WorldModel, ema: EMAEncoder) -> Dict[str, torch.Tensor]:
    t = {f"model.{k}": v for k, v in model.state_dict().items()}
    t.update({f"ema.{k}": v for k, v in ema.encoder.state_dict().items()})
    return t


def load_model_tensors(model: WorldModel, ema: Optional[EMAEncoder], tensors, where) -> None:
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.encoder.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError as exc:
        from .checkpoint import CheckpointError
        raise CheckpointError(f"weights do not fit this model config: {str(exc).splitlines()[0]}",
                              where) from None


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None, progress: Optional[bool] = None):
        self.cfg = cfg
        self.rank, self.world, self.device = _dist_setup(cfg)
        if cfg.optim.batch_size % self.world:
            raise InputError(f"optim.batch_size ({cfg.optim.batch_size}) must be divisible by "
                             f"the number of ranks ({self.world})")
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.run.seed)
        self.out = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.progress = progress

        # data: CTs rendered on the fly, or DRR stacks ("stacks:DIR", see data/stacks.py);
        # the validation source may be of either kind
        def listing(source):
            return list_stacks(source) if is_stack_source(source) else resolve_source(source)

        train_stacks = is_stack_source(cfg.data.source)
        items = listing(cfg.data.source)
        if cfg.data.val_source:
            val_stacks = is_stack_source(cfg.data.val_source)
            val_items = listing(cfg.data.val_source)
        else:
            val_stacks = train_stacks
            n_val = min(cfg.data.val_count, max(0, len(items) - 1))
            items, val_items = items[: len(items) - n_val], items[len(items) - n_val:]
        cache = prep = None
        if not (train_stacks and val_stacks):
            cache = PreprocessedCache(Path(cfg.data.cache_dir) if cfg.data.cache_dir else None)
            prep = cfg.data.preprocessing()

        def provider(its, stacks: bool, memory: int):
            return (DRRStackSet(its, cfg.views, memory) if stacks
                    else VolumeProvider(its, cache, prep, memory))

        self.train_data = provider(items, train_stacks, cfg.data.max_volumes_in_memory)
        self.val_data = provider(val_items, val_stacks, len(val_items) or 1)
        self.train_data.get(0)                     # fail now if nothing is readable
        if cfg.run.val_every and len(self.val_data):   # stored views must exist at val angles
            if val_stacks:
                self.val_data.require_angles(cfg.run.val_angles)
            if train_stacks:                       # the mean-view baseline's stacks
                self.train_data.require_angles(cfg.run.val_angles, limit=16)

        self.model = WorldModel(cfg.model).to(self.device)
        self.ema = EMAEncoder(self.model.encoder, cfg.model.ema_start, cfg.model.ema_end).to(self.device)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                     betas=(o.beta1, o.beta2))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, o.warmup_steps, o.steps))
        self.step = 0
        self.best = -math.inf
        if resume:
            self._resume(resume)
        objective = Objective(self.model, self.ema)
        if self.world > 1:
            objective = nn.parallel.DistributedDataParallel(
                objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.objective = objective
        self.views = ViewRenderer(cfg.views, self.device)
        self._mean_views = None

    # ------------------------------------------------------------------ state
    def _resume(self, spec: str) -> None:
        path = spec
        if spec == "auto":
            found = list_checkpoints(self.ckpt_dir)
            if not found:
                return
            path = found[-1]
        tensors, card, state = load_checkpoint(path, with_state=True)
        load_model_tensors(self.model, self.ema, tensors, path)
        try:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, ValueError, RuntimeError) as exc:
            from .checkpoint import CheckpointError
            raise CheckpointError(f"training state does not fit this run: {exc}", path) from None
        self.step = int(card["step"])
        self.best = float(state.get("best", -math.inf))

    def _save(self, metrics: Dict, best: bool) -> None:
        card = {"config": self.cfg.to_dict(), "metrics": metrics, "package_version": __version__,
                "model": "xray2xray-world-model", "training_data": self.cfg.data.source,
                "world_size": self.world}
        state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "torch_rng": torch.get_rng_state(), "best": self.best, "step": self.step}
        save_checkpoint(self.ckpt_dir, self.step, model_tensors(self.model, self.ema), card, state,
                        self.cfg.run.keep_last, best)

    def _mean_over_ranks(self, values: Dict[str, float]) -> Dict[str, float]:
        """Loss values averaged over ranks: the loss of the whole global batch."""
        if self.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t)}

    # ------------------------------------------------------------------ data
    def _batch(self, step: int):
        """This rank's slice of the globally planned batch of ``step``."""
        B = self.cfg.optim.batch_size
        seed = self.cfg.run.seed
        picks = np.random.default_rng([seed, step]).integers(0, len(self.train_data), size=B)
        per = B // self.world
        lo = self.rank * per
        if isinstance(self.train_data, DRRStackSet):
            rngs = [np.random.default_rng([seed, step, b]) for b in range(lo, lo + per)]
            return self.train_data.batch(picks[lo: lo + per], rngs).to(self.device)
        vols, ids = [], []
        for b in range(lo, lo + per):
            vol, item = self.train_data.get(int(picks[b]))
            vols.append(vol)
            ids.append(item.id)
        rngs = [np.random.default_rng([seed, step, b]) for b in range(lo, lo + per)]
        return self.views.render(vols, rngs, ids).to(self.device)

    def mean_views(self) -> Dict[float, np.ndarray]:
        """Mean training DRR at each validation angle (the 'mean view' baseline)."""
        if self._mean_views is None and isinstance(self.train_data, DRRStackSet):
            self._mean_views = mean_stack_views(self.train_data, self.cfg.run.val_angles, 16)
        if self._mean_views is None:
            n = min(16, len(self.train_data))
            vols = [self.train_data.get(i)[0] for i in range(n)]
            angles = list(self.cfg.run.val_angles)
            views = render_views(vols, self.cfg.views, angles)
            self._mean_views = {a: views[:, k].mean(0) for k, a in enumerate(angles)}
        return self._mean_views

    def validate(self) -> Dict:
        if not len(self.val_data):
            return {}
        if isinstance(self.val_data, DRRStackSet):
            return evaluate_stacks(self.model, self.val_data, self.cfg.run.val_angles,
                                   self.mean_views())
        vols = [self.val_data.get(i)[0] for i in range(len(self.val_data))]
        return evaluate_views(self.model, vols, self.cfg.views, self.cfg.run.val_angles,
                              self.mean_views())

    # ------------------------------------------------------------------ loop
    def fit(self) -> Dict:
        cfg = self.cfg
        main = self.rank == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        log = open(self.out / "metrics.jsonl", "a") if main else None
        tb = None
        if main:
            try:
                from torch.utils.tensorboard import SummaryWriter
                tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                pass
        bar = None
        if main:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.optim.steps, initial=self.step, desc="train", unit="step",
                       disable=not self.progress if self.progress is not None else None)
        amp = (torch.autocast("cuda", dtype=torch.bfloat16)
               if self.device.type == "cuda" and cfg.run.bf16 else nullcontext())
        last = {}
        t_render = t_total = 0.0
        try:
            while self.step < cfg.optim.steps:
                t0 = time.perf_counter()
                batch = self._batch(self.step)
                t1 = time.perf_counter()
                with amp:
                    losses = self.objective(batch.context, batch.context_angle, batch.targets, batch.deltas)
                self.opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.opt.step()
                self.sched.step()
                m = self.ema.update(self.model.encoder, self.step, cfg.optim.steps)
                self.step += 1
                t2 = time.perf_counter()
                t_render += t1 - t0
                t_total += t2 - t0
                if not all(torch.isfinite(v) for v in losses.values()):
                    raise XrayWorldModelError(f"loss became non-finite at step {self.step}: "
                                              f"{ {k: float(v) for k, v in losses.items()} }")
                last = self._mean_over_ranks({k: float(v.detach()) for k, v in losses.items()})
                if main and (self.step % cfg.run.log_every == 0 or self.step == cfg.optim.steps):
                    rec = {"step": self.step, "lr": self.sched.get_last_lr()[0], "ema_momentum": m,
                           "grad_norm": float(gnorm), **{f"loss_{k}": v for k, v in last.items()},
                           "samples_per_s": cfg.optim.batch_size * cfg.run.log_every / max(t_total, 1e-9)
                           if self.step % cfg.run.log_every == 0 else None,
                           "render_fraction": t_render / max(t_total, 1e-9)}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    if tb is not None:
                        for k, v in last.items():
                            tb.add_scalar(f"loss/{k}", v, self.step)
                    t_render = t_total = 0.0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['total']:.4f}")
                done = self.step == cfg.optim.steps
                val_due = cfg.run.val_every and (self.step % cfg.run.val_every == 0 or done)
                ckpt_due = cfg.run.checkpoint_every and (self.step % cfg.run.checkpoint_every == 0 or done)
                metrics = {}
                if main and (val_due or ckpt_due):
                    if val_due:
                        metrics = self.validate()
                        if metrics:
                            log.write(json.dumps({"step": self.step, "validation": metrics}) + "\n")
                            log.flush()
                    if ckpt_due:
                        score = _score(metrics)
                        is_best = score is not None and score > self.best
                        if is_best:
                            self.best = score
                        self._save(metrics, is_best)
                if self.world > 1 and (val_due or ckpt_due):
                    dist.barrier()
            if self.world > 1:   # proof that every rank stepped, in rank 0's log
                steps = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
                dist.all_gather(steps, torch.tensor([self.step]))
                if main:
                    log.write(json.dumps({"event": "done", "world_size": self.world,
                                          "rank_steps": [int(t) for t in steps]}) + "\n")
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            if tb is not None:
                tb.close()
        return last


def _score(metrics: Dict) -> Optional[float]:
    """Mean world-model PSNR over the validation angles (higher is better)."""
    vals = [m["world_model_psnr"] for m in metrics.values() if "world_model_psnr" in m]
    return float(np.mean(vals)) if vals else None


def train(cfg: TrainConfig, resume: Optional[str] = None, progress: Optional[bool] = None) -> Dict:
    trainer = Trainer(cfg, resume, progress)
    try:
        result = trainer.fit()
        if dist.is_initialized():
            # every rank finished before any tears down its process group: a rank that
            # destroys gloo while a peer is still in its last collective can abort at exit
            dist.barrier()
        return result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
