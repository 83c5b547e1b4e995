"""The training loop: views rendered on the fly from CTs or taken from DRR stacks (either
data mode is a :class:`~XrayWorldModel.data.ViewSource`), the world-model losses, AdamW with
warmup + cosine and gradient clipping (:mod:`.optim`), EMA targets, validation
(:mod:`.evaluate`), checkpoints and exact resume, on one device or many through torchrun
(DistributedDataParallel).

Batches are planned globally: step ``s`` draws its CTs from a generator seeded by
``(seed, s)`` and sample ``b`` its views from ``(seed, s, b)``. Each rank renders its own
slice of that batch, so a run's data do not depend on the number of ranks or on where it
was resumed, which is what makes resume exact and N ranks match one process.

Every record written to ``metrics.jsonl`` is also handed to ``on_log`` (rank 0), so a caller
follows the run without reading the file. The command line also gets a progress line per
logging interval (step, loss, samples/s, ETA; at most one every few seconds in a log or a
pipe). SIGINT or SIGTERM lets the current step finish, writes a checkpoint at that step and
raises :class:`~XrayWorldModel.errors.Interrupted`, so Ctrl-C loses nothing.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..console import BAR, LINES, PROG, LineTicker, Progress, emit, format_duration, progress_mode
from ..data import PreprocessedCache, is_stack_source, list_stacks, resolve_source
from ..drr import resolve_device
from ..errors import InputError, Interrupted, XrayWorldModelError
from ..fileutil import atomic_path
from ..models import EMAEncoder, PixelLoss, WorldModel, world_model_losses
from ..version import __version__
from .checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, load_model_tensors,
                         model_tensors, save_checkpoint)
from .evaluate import open_views, score_views
from .optim import adamw, optimizer_step, warmup_cosine

#: How many training cases the mean-view baseline averages.
MEAN_VIEW_CASES = 16


class Objective(nn.Module):
    """The world-model losses as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: WorldModel, ema: EMAEncoder):
        super().__init__()
        self.model, self.ema = model, ema
        self.pixel_loss = PixelLoss(model.config.ssim_weight)

    def forward(self, context, context_angle, targets, deltas):
        return world_model_losses(self.model, self.ema, context, context_angle, targets, deltas,
                                  self.pixel_loss)


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


def flat_config(data: Dict[str, Any]) -> Dict[str, Any]:
    """``{"optim": {"steps": 30}}`` -> ``{"optim.steps": 30}`` (JSON values, tuples as lists)."""
    return {f"{sec}.{key}": json.loads(json.dumps(value))
            for sec, table in data.items() if isinstance(table, dict)
            for key, value in table.items()}


def config_changes(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """``["optim.steps 30 -> 60", ...]``: the keys whose values differ between two configs."""
    a, b = flat_config(old), flat_config(new)
    return [f"{k} {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def write_run_config(out: Path, cfg: TrainConfig) -> None:
    """Write ``config.json``; when the folder's one differs, say what changed (a warning),
    so the run's record is never rewritten silently."""
    path = out / "config.json"
    new = cfg.to_dict()
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict):
            changes = config_changes(old, new)
            if not changes:
                return
            warnings.warn(f"{path}: the run's config changes ({'; '.join(changes)}); "
                          "config.json now records the new values", stacklevel=3)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(new, indent=1))


class _RunLog:
    """Rank 0's outputs of a run: ``config.json``, ``metrics.jsonl`` (each record also handed
    to ``on_log``), TensorBoard scalars, the progress bar on a terminal and a progress line
    per logging interval. Other ranks get a silent one."""

    def __init__(self, trainer: "Trainer", active: bool):
        self.active, self.on_log = active, trainer.on_log
        self.file = self.tb = self.bar = None
        self.mode = progress_mode(trainer.progress)
        self.ticker = LineTicker()
        self.start_step, self.printed = trainer.step, False
        if not active:
            return
        trainer.out.mkdir(parents=True, exist_ok=True)
        write_run_config(trainer.out, trainer.cfg)
        self.file = open(trainer.out / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(trainer.out / "tb"))
        except ImportError:
            pass
        progress = trainer.progress
        self.bar = tqdm(total=trainer.cfg.optim.steps, initial=trainer.step, desc="train",
                        unit="step", disable=(self.mode != BAR) if progress is not None else None)

    def line(self, step: int, total: int, loss: float, samples_per_s: Optional[float]) -> None:
        """``xray2xray train: step 20/2200, loss 0.1234, 51.2 samples/s, ETA 5 min 12 s``:
        every logging interval on a terminal; in a log or a pipe the first, the last, and
        at most one every few seconds in between."""
        if not self.active or self.mode not in (BAR, LINES):
            return
        due, last = self.ticker.due(), step >= total
        if not (due or last or not self.printed or self.mode == BAR):
            return
        self.printed = True
        parts = [f"{PROG} train: step {step}/{total}", f"loss {loss:.4f}"]
        if samples_per_s:
            parts.append(f"{samples_per_s:.3g} samples/s")
        done, elapsed = step - self.start_step, self.ticker.elapsed()
        if last:
            parts.append(f"done in {format_duration(elapsed)}")
        elif done > 0 and elapsed > 0:
            parts.append(f"ETA {format_duration((total - step) * elapsed / done)}")
        emit(", ".join(parts))

    def record(self, rec: Dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.on_log is not None:
            self.on_log(rec)

    def scalars(self, losses: Dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in losses.items():
                self.tb.add_scalar(f"loss/{k}", v, step)

    def progress(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        for thing in (self.bar, self.file, self.tb):
            if thing is not None:
                thing.close()


class Trainer:
    """One training run. ``on_log`` (optional) is called on rank 0 with each record written
    to ``metrics.jsonl``: losses every ``run.log_every`` steps, validation metrics, the
    closing ``done`` event of a multi-rank run."""

    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None, progress: Progress = None,
                 on_log: Optional[Callable[[Dict], None]] = None):
        self.cfg = cfg
        self.rank, self.world, self.device = _dist_setup(cfg)
        if cfg.optim.batch_size % self.world:
            raise InputError(f"optim.batch_size ({cfg.optim.batch_size}) must be divisible by "
                             f"the number of ranks ({self.world})")
        if cfg.run.deterministic:
            if self.device.type == "cuda":   # cuBLAS is only deterministic with a fixed workspace
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.run.seed)
        self.out = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.progress = progress
        self.on_log = on_log
        self.train_data, self.val_data = self._data()

        self.model = WorldModel(cfg.model).to(self.device)
        self.ema = EMAEncoder(self.model.encoder, cfg.model.ema_start, cfg.model.ema_end).to(self.device)
        o = cfg.optim
        self.opt = adamw(self.model.parameters(), o.lr, o.weight_decay, (o.beta1, o.beta2))
        self.sched = warmup_cosine(self.opt, o.warmup_steps, o.steps)
        self.step = 0
        self.saved_step = -1                   # the step of the last checkpoint written
        self.best = -math.inf
        if resume:
            self._resume(resume)
        objective = Objective(self.model, self.ema)
        if self.world > 1:
            objective = nn.parallel.DistributedDataParallel(
                objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.objective = objective
        self._mean_views = None

    def _data(self):
        """(training, validation) :class:`~XrayWorldModel.data.ViewSource` s: CTs rendered on
        the fly, or DRR stacks ("stacks:DIR", see data/stacks.py); the validation source may
        be of either kind. Fails now if nothing is readable, or if validation is due and
        stored views lack the validation angles."""
        cfg = self.cfg
        (items, train_stacks), (val_items, val_stacks) = list_sources(cfg)
        cache = prep = None
        if not (train_stacks and val_stacks):
            cache = PreprocessedCache(Path(cfg.data.cache_dir) if cfg.data.cache_dir else None)
            prep = cfg.data.preprocessing()
        train = open_views(items, train_stacks, cfg.views, cfg.data.max_volumes_in_memory,
                           cache, prep, self.device)
        val = open_views(val_items, val_stacks, cfg.views, len(val_items) or 1, cache, prep,
                         self.device)
        train.get(0)                               # fail now if nothing is readable
        if cfg.run.val_every and len(val):         # stored views must exist at val angles
            val.require_angles(cfg.run.val_angles)
            train.require_angles(cfg.run.val_angles, limit=MEAN_VIEW_CASES)   # the baseline's
        return train, val

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
            raise CheckpointError(f"training state does not fit this run: {exc}", path) from None
        self.step = self.saved_step = int(card["step"])
        self.best = float(state.get("best", -math.inf))

    def _save(self, metrics: Dict, best: bool) -> None:
        card = {"config": self.cfg.to_dict(), "metrics": metrics, "package_version": __version__,
                "model": "xray2xray-world-model", "training_data": self.cfg.data.source,
                "world_size": self.world}
        state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "torch_rng": torch.get_rng_state(), "best": self.best, "step": self.step}
        save_checkpoint(self.ckpt_dir, self.step, model_tensors(self.model, self.ema), card, state,
                        self.cfg.run.keep_last, best)
        self.saved_step = self.step

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
        rngs = [np.random.default_rng([seed, step, b]) for b in range(lo, lo + per)]
        return self.train_data.batch(picks[lo: lo + per], rngs).to(self.device)

    def mean_views(self) -> Dict[float, np.ndarray]:
        """Mean training DRR at each validation angle (the 'mean view' baseline)."""
        if self._mean_views is None:
            self._mean_views = self.train_data.mean_views(self.cfg.run.val_angles, MEAN_VIEW_CASES)
        return self._mean_views

    def validate(self) -> Dict:
        if not len(self.val_data):
            return {}
        return score_views(self.model, self.val_data, self.cfg.run.val_angles, self.mean_views())

    # ------------------------------------------------------------------ loop
    def _train_step(self, amp):
        """One optimiser step: (mean losses over ranks, grad norm, EMA momentum, seconds
        rendering, seconds in all)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        batch = self._batch(self.step)
        t1 = time.perf_counter()
        with amp:
            losses = self.objective(batch.context, batch.context_angle, batch.targets, batch.deltas)
        gnorm = optimizer_step(self.opt, self.sched, losses["total"], self.model.parameters(),
                               cfg.optim.grad_clip)
        m = self.ema.update(self.model.encoder, self.step, cfg.optim.steps)
        self.step += 1
        t2 = time.perf_counter()
        if not all(torch.isfinite(v) for v in losses.values()):
            raise XrayWorldModelError(f"loss became non-finite at step {self.step}: "
                                      f"{ {k: float(v) for k, v in losses.items()} }")
        last = self._mean_over_ranks({k: float(v.detach()) for k, v in losses.items()})
        return last, gnorm, m, t1 - t0, t2 - t0

    def _loss_record(self, last: Dict[str, float], gnorm, m: float, t_render: float,
                     t_total: float) -> Dict:
        cfg = self.cfg
        return {"step": self.step, "lr": self.sched.get_last_lr()[0], "ema_momentum": m,
                "grad_norm": float(gnorm), **{f"loss_{k}": v for k, v in last.items()},
                "samples_per_s": cfg.optim.batch_size * cfg.run.log_every / max(t_total, 1e-9)
                if self.step % cfg.run.log_every == 0 else None,
                "render_fraction": t_render / max(t_total, 1e-9)}

    def _validate_and_save(self, out: _RunLog) -> None:
        """Validation and a checkpoint (rank 0) when due at the current step."""
        run = self.cfg.run
        done = self.step == self.cfg.optim.steps
        val_due = run.val_every and (self.step % run.val_every == 0 or done)
        ckpt_due = run.checkpoint_every and (self.step % run.checkpoint_every == 0 or done)
        if self.rank == 0 and (val_due or ckpt_due):
            metrics = self.validate() if val_due else {}
            if metrics:
                out.record({"step": self.step, "validation": metrics})
            if ckpt_due:
                score = _score(metrics)
                is_best = score is not None and score > self.best
                if is_best:
                    self.best = score
                self._save(metrics, is_best)
        if self.world > 1 and (val_due or ckpt_due):
            dist.barrier()

    def _stop_requested(self, stop: "StopOnSignal") -> int:
        """The signal that asks this run to stop (0: none), agreed by every rank."""
        if self.world == 1:
            return stop.signum
        flag = torch.tensor([stop.signum], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _interrupted(self, signum: int, out: _RunLog) -> Interrupted:
        """Write a checkpoint at the current step (rank 0), then the exception to raise."""
        name = signal.Signals(signum).name
        if self.rank == 0 and self.step > 0 and self.saved_step != self.step:
            self._save({}, False)
        out.record({"step": self.step, "event": "interrupted", "signal": name})
        if self.world > 1:
            dist.barrier()
        ckpt = self.ckpt_dir / f"step-{self.step:07d}.safetensors"
        return Interrupted(f"training stopped by {name} at step {self.step} of "
                           f"{self.cfg.optim.steps}; checkpoint {ckpt} written; run the same "
                           "command with --resume to continue", signum)

    def _log_step(self, out: _RunLog, last, gnorm, m, t_render, t_total, steps: int) -> bool:
        """The loss record, scalars and progress line when a logging interval (of ``steps``
        steps taking ``t_total`` seconds) ends."""
        cfg = self.cfg
        if not (self.step % cfg.run.log_every == 0 or self.step == cfg.optim.steps):
            return False
        if self.rank == 0:
            rec = self._loss_record(last, gnorm, m, t_render, t_total)
            out.record(rec)
            out.scalars(last, self.step)
            out.line(self.step, cfg.optim.steps, last["total"],
                     cfg.optim.batch_size * steps / max(t_total, 1e-9))
        return True

    def fit(self) -> Dict:
        cfg = self.cfg
        out = _RunLog(self, self.rank == 0)
        amp = (torch.autocast("cuda", dtype=torch.bfloat16)
               if self.device.type == "cuda" and cfg.run.bf16 else nullcontext())
        last = {}
        t_render = t_total = 0.0
        since = 0
        try:
            with StopOnSignal() as stop:
                while self.step < cfg.optim.steps:
                    last, gnorm, m, dt_render, dt_total = self._train_step(amp)
                    t_render += dt_render
                    t_total += dt_total
                    since += 1
                    if self._log_step(out, last, gnorm, m, t_render, t_total, since):
                        t_render = t_total = 0.0
                        since = 0
                    out.progress(last["total"])
                    self._validate_and_save(out)
                    signum = self._stop_requested(stop)
                    if signum:
                        raise self._interrupted(signum, out)
            if self.world > 1:   # proof that every rank stepped, in rank 0's log
                steps = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
                dist.all_gather(steps, torch.tensor([self.step]))
                out.record({"event": "done", "world_size": self.world,
                            "rank_steps": [int(t) for t in steps]})
        finally:
            out.close()
        return last


class StopOnSignal:
    """``with StopOnSignal() as stop:``: SIGINT and SIGTERM set ``stop.signum`` instead of
    killing the process, so the loop can finish its step and save; a second signal acts at
    once (the handler before us). A signal the process ignores stays ignored. Only the main
    thread can take signals; elsewhere (a Slicer worker thread) this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self.previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) == signal.SIG_IGN:   # e.g. SIGINT of a background job
                    continue
                try:
                    self.previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):   # pragma: no cover - embedded interpreters
                    pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._before(signum))

    def _before(self, sig: int):
        prev = self.previous.get(sig)
        return prev if prev is not None else signal.SIG_DFL

    def __exit__(self, *exc) -> bool:
        for sig in self.previous:
            signal.signal(sig, self._before(sig))
        return False


def list_sources(cfg: TrainConfig) -> Tuple[Tuple[list, bool], Tuple[list, bool]]:
    """((training items, are stacks), (validation items, are stacks)) the config names:
    listed only (no CT is read), so a missing folder or manifest fails at once."""
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
    return (items, train_stacks), (val_items, val_stacks)


def _score(metrics: Dict) -> Optional[float]:
    """Mean world-model PSNR over the validation angles (higher is better)."""
    vals = [m["world_model_psnr"] for m in metrics.values() if "world_model_psnr" in m]
    return float(np.mean(vals)) if vals else None


def train(cfg: TrainConfig, resume: Optional[str] = None, progress: Progress = None,
          on_log: Optional[Callable[[Dict], None]] = None) -> Dict:
    trainer = Trainer(cfg, resume, progress, on_log)
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
