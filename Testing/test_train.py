"""World-model training: configs, checkpoints, exact resume after SIGKILL, torchrun with
two real processes, and bad input. Tiny models and a few steps keep this fast."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import sigint_as_in_a_terminal
from XrayWorldModel.errors import InputError
from XrayWorldModel.train import CheckpointError, load_checkpoint, load_config, save_checkpoint
from XrayWorldModel.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "model": {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "heads": 2,
              "transition_depth": 1, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
              "decoder_channels": 4, "n_freq": 2, "latent_loss": "smooth_l1"},
    "data": {"source": "phantom:4", "val_count": 1, "grid_size": 40, "grid_spacing": 8.0},
    "views": {"image_size": 32, "field_of_view_mm": 400.0, "targets_per_context": 2,
              "tilt_max_deg": 2.0, "shift_max_mm": 3.0, "intensity_jitter": 0.05, "noise_std": 0.01},
    "optim": {"batch_size": 4, "steps": 6, "lr": 1e-3, "warmup_steps": 2},
    "run": {"seed": 3, "deterministic": True, "device": "cpu", "log_every": 1, "val_every": 0,
            "checkpoint_every": 3, "keep_last": 5, "val_angles": [90.0]},
}


def _config(tmp_path, name="tiny.json", **sections):
    data = json.loads(json.dumps(TINY))
    for sec, values in sections.items():
        data[sec].update(values)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _env(tmp_path):
    env = dict(os.environ, XRAY2XRAY_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="default",
               OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(args, tmp_path, **kw):
    return subprocess.run([sys.executable, "-m", "XrayWorldModel", *args], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, **kw)


def _free_port() -> int:
    """A port nothing listens on now, so parallel runs of the suite do not collide."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run_dir, step):
    return load_file(str(Path(run_dir) / "checkpoints" / f"step-{step:07d}.safetensors"))


def _assert_same_weights(run_a, run_b, step):
    """Bit-identical weights of two runs' step checkpoints."""
    a, b = _weights(run_a, step), _weights(run_b, step)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- config

def test_presets_load_and_bad_configs_name_the_key(tmp_path):
    assert load_config("cpu-small").model.image_size == 64
    assert load_config("paper").model.embed_dim == 768
    cfg = load_config(str(_config(tmp_path)), ["optim.steps=9", "data.source=phantom:2"])
    assert cfg.optim.steps == 9 and cfg.data.source == "phantom:2"
    with pytest.raises(InputError, match="unknown key optim.stepz"):
        load_config(str(_config(tmp_path)), ["optim.stepz=3"])
    with pytest.raises(InputError, match="optim.steps must be int"):
        load_config(str(_config(tmp_path)), ['optim.steps="ten"'])
    with pytest.raises(InputError, match="depth must be int"):
        load_config(str(_config(tmp_path)), ["model.depth=1.5"])
    with pytest.raises(InputError, match="views.image_size"):
        load_config(str(_config(tmp_path)), ["views.image_size=48"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_config(str(bad))
    with pytest.raises(InputError, match="shipped presets"):
        load_config("no-such-preset")


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    r = _cli(["train", "--config", str(_config(tmp_path)), "run.unknown=1"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unknown key run.unknown" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_pruning_and_tamper_detection(tmp_path):
    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, t, {"config": {}}, {"x": torch.tensor([step])}, keep_last=2,
                        best=step == 2)
    names = sorted(p.name for p in tmp_path.glob("step-*.safetensors"))
    assert names == ["step-0000002.safetensors", "step-0000003.safetensors"]
    tensors, card, state = load_checkpoint(tmp_path, with_state=True)
    assert card["step"] == 3 and int(state["x"]) == 3 and torch.equal(tensors["a"], t["a"])
    assert load_checkpoint(tmp_path / "best.safetensors")[1]["step"] == 2
    w = tmp_path / "step-0000003.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA256"):
        load_checkpoint(w)
    w.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="truncated or modified"):
        load_checkpoint(w)
    (tmp_path / "step-0000002.state.pt").unlink()
    with pytest.raises(CheckpointError, match="state file is missing"):
        load_checkpoint(tmp_path / "step-0000002.safetensors", with_state=True)


# ---------------------------------------------------------------- resume and distributed

@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    """Kill training with SIGKILL after its first checkpoint, resume, and get bit-identical
    final weights to an uninterrupted run (CPU, deterministic mode). Dropout draws from
    torch's RNG, so resume must restore that state too."""
    cfg = _config(tmp_path, model={"dropout": 0.1}, optim={"steps": 40}, run={"checkpoint_every": 10})
    full = _cli(["train", "--config", str(cfg), "run.out_dir=full"], tmp_path, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, "-m", "XrayWorldModel", "train", "--config", str(cfg),
                             "run.out_dir=killed"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "step-0000010.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (tmp_path / "killed" / "checkpoints" / "step-0000040.json").exists()
    resumed = _cli(["train", "--config", str(cfg), "run.out_dir=killed", "--resume"], tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(tmp_path / "full", tmp_path / "killed", 40)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed with this torch")
    cfg = _config(tmp_path, optim={"steps": 3}, run={"checkpoint_every": 3})
    single = _cli(["train", "--config", str(cfg), "run.out_dir=single"], tmp_path, timeout=600)
    assert single.returncode == 0, single.stderr
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m",
                        "XrayWorldModel.train", "--config", str(cfg), "run.out_dir=ddp"],
                       cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    done = [rec for rec in log if rec.get("event") == "done"]
    assert done and done[0]["world_size"] == 2 and done[0]["rank_steps"] == [3, 3]
    ref = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    losses = [rec["loss_total"] for rec in log if "loss_total" in rec]
    ref_losses = [rec["loss_total"] for rec in ref if "loss_total" in rec]
    assert len(losses) == 3 and all(np.isfinite(losses))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    # Adam's normalised steps amplify float-rounding differences of near-zero gradients, so
    # single elements may differ by a fraction of one step (lr 1e-3); on average they agree
    a, b = _weights(tmp_path / "single", 3), _weights(tmp_path / "ddp", 3)
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert float(diff.max()) < 5e-4 and float(diff.mean()) < 1e-5, (float(diff.max()), float(diff.mean()))
    # only rank 0 wrote: the run folder holds exactly what a single process writes
    listing = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    assert listing(tmp_path / "ddp") == listing(tmp_path / "single")


def test_lr_schedule_warms_up_then_decays_to_one_percent():
    from XrayWorldModel.train.optim import adamw, lr_factor, optimizer_step, warmup_cosine
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20) == 1.0 and lr_factor(20, 4, 20) == pytest.approx(0.01)
    assert lr_factor(12, 4, 20) == pytest.approx(0.505)
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = adamw([w], lr=0.1, weight_decay=0.0)
    sched = warmup_cosine(opt, 2, 10)
    gnorm = optimizer_step(opt, sched, (w ** 2).sum() / 2, [w], grad_clip=1.0)
    assert float(gnorm) == pytest.approx(5.0)               # norm before clipping
    assert sched.get_last_lr()[0] == pytest.approx(0.1)     # after 1 step of warmup 2
    assert "lr_lambdas" in sched.state_dict() and sched.state_dict()["lr_lambdas"] == [None]


# ---------------------------------------------------------------- bad input

def test_no_readable_ct_is_a_clear_error(tmp_path):
    data = tmp_path / "cts"
    data.mkdir()
    (data / "a.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    cfg = _config(tmp_path, data={"source": str(data), "val_count": 0})
    r = _cli(["train", "--config", str(cfg), "run.out_dir=x"], tmp_path, timeout=300)
    assert r.returncode == 2 and "none of the 1 CTs could be read" in r.stderr
    assert "Traceback" not in r.stderr


def test_ct_failing_mid_run_is_skipped_and_training_goes_on(tmp_path):
    from XrayWorldModel.io import write_volume
    from XrayWorldModel.phantom import procedural_chest
    data = tmp_path / "cts"
    data.mkdir()
    for s in range(2):
        write_volume(procedural_chest(s, (48, 48, 40), 7.0), data / f"ok{s}.nii.gz")
    good = (data / "ok0.nii.gz").read_bytes()
    (data / "zz_broken.nii.gz").write_bytes(good[: len(good) // 3])   # truncated
    cfg = _config(tmp_path, data={"source": str(data), "val_count": 0}, optim={"steps": 8},
                  run={"checkpoint_every": 8})
    r = _cli(["train", "--config", str(cfg), "run.out_dir=x"], tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "skipping CT" in r.stderr and "zz_broken" in r.stderr
    assert (tmp_path / "x" / "checkpoints" / "step-0000008.json").exists()


def test_corrupted_checkpoint_on_resume_is_a_clear_error(tmp_path):
    cfg = _config(tmp_path, optim={"steps": 3}, run={"checkpoint_every": 3})
    assert _cli(["train", "--config", str(cfg), "run.out_dir=x"], tmp_path, timeout=300).returncode == 0
    w = tmp_path / "x" / "checkpoints" / "step-0000003.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    r = _cli(["train", "--config", str(cfg), "run.out_dir=x", "optim.steps=6", "--resume"], tmp_path)
    assert r.returncode == 2 and "SHA256" in r.stderr and "Traceback" not in r.stderr


def test_eval_views_prints_model_and_baselines(tmp_path):
    cfg = _config(tmp_path, optim={"steps": 3}, run={"checkpoint_every": 3})
    assert _cli(["train", "--config", str(cfg), "run.out_dir=x"], tmp_path, timeout=300).returncode == 0
    r = _cli(["eval-views", "--model", "x", "--data", "phantom:2", "--seed", "50",
              "--angles", "45,90"], tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_ct"] == 2 and out["data"] == "phantom:2:50" and set(out["angles"]) == {"45", "90"}
    for row in out["angles"].values():
        for name in ("world_model", "copy_input", "mean_view"):
            assert np.isfinite(row[f"{name}_psnr"]) and -1 <= row[f"{name}_ssim"] <= 1
    r = _cli(["eval-views", "--model", "nothere", "--data", "phantom:1"], tmp_path)
    assert r.returncode == 2 and "no such checkpoint" in r.stderr


# ---------------------------------------------------------------- interrupts, progress, resume

def _wait_for_step(metrics: Path, proc, step: int, timeout: float = 300) -> None:
    """Wait until ``metrics.jsonl`` records ``step`` (the run is inside its training loop)."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists():
            steps = [json.loads(line).get("step", 0) for line in
                     metrics.read_text().splitlines() if line.endswith("}")]
            if steps and max(steps) >= step:
                return
        time.sleep(0.01)
    raise AssertionError(f"training never reached step {step} (exit {proc.poll()})")


@pytest.mark.slow
def test_sigint_checkpoints_the_current_step_and_resume_is_exact(tmp_path):
    """A real SIGINT to a real `xray2xray train` process: it finishes the step, writes a
    checkpoint at that step, exits 130; --resume continues from it and the weights after the
    remaining steps equal an uninterrupted run's (CPU, deterministic mode)."""
    cfg = _config(tmp_path, optim={"steps": 60}, run={"checkpoint_every": 1000})
    full = _cli(["train", "--config", str(cfg), "run.out_dir=full"], tmp_path, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, "-m", "XrayWorldModel", "train", "--config", str(cfg),
                             "run.out_dir=cut"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_in_a_terminal)
    _wait_for_step(tmp_path / "cut" / "metrics.jsonl", proc, 5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    cards = sorted((tmp_path / "cut" / "checkpoints").glob("step-*.json"))
    assert len(cards) == 1, cards                      # no periodic checkpoint was due
    step = json.loads(cards[0].read_text())["step"]
    assert 5 <= step < 60
    last = json.loads((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": step, "event": "interrupted", "signal": "SIGINT"}
    assert f"stopped by SIGINT at step {step} of 60" in err and "--resume" in err
    resumed = _cli(["train", "--config", str(cfg), "run.out_dir=cut", "--resume"], tmp_path,
                   timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming cut from step {step} of 60" in resumed.stderr
    _assert_same_weights(tmp_path / "full", tmp_path / "cut", 60)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_143(tmp_path):
    cfg = _config(tmp_path, optim={"steps": 400}, run={"checkpoint_every": 1000})
    proc = subprocess.Popen([sys.executable, "-m", "XrayWorldModel.train", "--config", str(cfg),
                             "run.out_dir=x", "--quiet"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(tmp_path / "x" / "metrics.jsonl", proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1].startswith("xray2xray: training stopped by SIGTERM at step ")
    step = json.loads(sorted((tmp_path / "x" / "checkpoints").glob("step-*.json"))[-1]
                      .read_text())["step"]
    assert 2 <= step < 400
    load_checkpoint(tmp_path / "x", with_state=True)   # whole, and its SHA256 checks out


def test_stop_on_signal_defers_the_first_signal_only(live_sigint):
    from XrayWorldModel.train.trainer import StopOnSignal
    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signum == signal.SIGINT              # noted, not raised
        with pytest.raises(KeyboardInterrupt):           # a second Ctrl-C acts at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is before


def test_thirty_steps_print_progress_lines_into_a_pipe(tmp_path):
    cfg = _config(tmp_path, optim={"steps": 30}, run={"checkpoint_every": 30, "log_every": 5})
    r = _cli(["train", "--config", str(cfg), "run.out_dir=x"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    import re
    lines = [line for line in r.stderr.splitlines() if line.startswith("xray2xray train: step")]
    assert len(lines) >= 2, r.stderr                     # the first and the last, at least
    pattern = (r"xray2xray train: step (\d+)/30, loss \d+\.\d{4}, [\d.e+]+ samples/s, "
               r"(ETA \d+ s|done in \d+ s)")
    for line in lines:
        assert re.fullmatch(pattern, line), line
    assert lines[0].startswith("xray2xray train: step 5/30") and lines[-1].startswith(
        "xray2xray train: step 30/30") and "done in" in lines[-1]
    quiet = _cli(["train", "--config", str(cfg), "run.out_dir=y", "optim.steps=3", "--quiet"],
                 tmp_path, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert "xray2xray train: step" not in quiet.stderr


def _recorded_run(tmp_path, steps=30, **run):
    """A run folder whose checkpoint card records ``steps`` (no training needed)."""
    out = tmp_path / "run"
    cfg = load_config(str(_config(tmp_path)), [f"optim.steps={steps}", f"run.out_dir={out}"])
    for key, value in run.items():
        setattr(cfg.run, key, value)
    save_checkpoint(out / "checkpoints", 10, {"w": torch.zeros(1)}, {"config": cfg.to_dict()},
                    {"x": torch.zeros(1)})
    return out, cfg


def test_resume_keeps_the_recorded_step_budget(tmp_path):
    from XrayWorldModel.train.preflight import prepare_run
    out, _ = _recorded_run(tmp_path, steps=30, seed=7)
    preset = load_config(str(_config(tmp_path)), [f"run.out_dir={out}"])   # steps 6, seed 3
    plan = prepare_run(preset, [f"run.out_dir={out}"], "auto")
    assert plan.config.optim.steps == 30 and plan.config.run.seed == 7
    assert plan.checkpoint.endswith("step-0000010.safetensors") and not plan.done
    assert plan.notes[0] == f"resuming {out} from step 10 of 30 (step-0000010.safetensors)"
    assert "optim.steps" in plan.notes[1] and "run.seed" in plan.notes[1]
    plan = prepare_run(preset, [f"run.out_dir={out}", "optim.steps=60"], "auto")
    assert plan.config.optim.steps == 60 and plan.config.run.seed == 7
    plan = prepare_run(load_config(str(_config(tmp_path)), ["optim.steps=10"]),
                       ["optim.steps=10"], str(out))
    assert plan.done and "nothing to do" in plan.notes[-1]


def test_resuming_a_run_recorded_before_body_centring_keeps_scan_centring(tmp_path):
    """A run whose config predates ``data.centre_on`` trained on scan-centred cubes; resumed,
    it must keep them (not switch to the new default mid-run), while a recorded value and an
    override given now are honoured."""
    from XrayWorldModel.train.preflight import prepare_run
    out, cfg = _recorded_run(tmp_path)
    legacy = cfg.to_dict()
    del legacy["data"]["centre_on"]
    save_checkpoint(out / "checkpoints", 12, {"w": torch.zeros(1)}, {"config": legacy},
                    {"x": torch.zeros(1)})
    assert cfg.data.centre_on == "body"                  # the default for new runs
    assert prepare_run(cfg, [], "auto").config.data.centre_on == "scan"
    plan = prepare_run(cfg, ["data.centre_on=body"], "auto")
    assert plan.config.data.centre_on == "body"
    save_checkpoint(out / "checkpoints", 14, {"w": torch.zeros(1)}, {"config": cfg.to_dict()},
                    {"x": torch.zeros(1)})
    assert prepare_run(cfg, [], "auto").config.data.centre_on == "body"
    with pytest.raises(InputError, match="data.centre_on must be one of body, chest, scan"):
        load_config(str(_config(tmp_path)), ["data.centre_on=table"]).validate()
    with pytest.raises(InputError, match="data.outside_body must be one of keep, air"):
        load_config(str(_config(tmp_path)), ["data.outside_body=table"]).validate()


def test_training_into_an_existing_run_needs_resume(tmp_path):
    from XrayWorldModel.train.preflight import prepare_run
    out, cfg = _recorded_run(tmp_path)
    with pytest.raises(InputError, match="add --resume"):
        prepare_run(cfg, [], None)
    empty = load_config(str(_config(tmp_path)), [f"run.out_dir={tmp_path / 'new'}"])
    plan = prepare_run(empty, [], "auto")
    assert plan.checkpoint is None and "starting a new run" in plan.notes[0]
    assert not (tmp_path / "new").exists()             # the check creates nothing


def test_config_json_is_never_rewritten_silently(tmp_path):
    from XrayWorldModel.train.trainer import write_run_config
    cfg = load_config(str(_config(tmp_path)))
    write_run_config(tmp_path, cfg)
    first = (tmp_path / "config.json").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_run_config(tmp_path, cfg)                  # the same config: no word, no write
    cfg.optim.steps = 60
    with pytest.warns(UserWarning, match=r"optim.steps 6 -> 60"):
        write_run_config(tmp_path, cfg)
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["steps"] == 60
    assert first != (tmp_path / "config.json").read_text()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path, 1, {"a": torch.ones(2)}, {"config": {}}, {"x": torch.ones(1)},
                        best=True)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert len(modes) == 6 and set(modes.values()) == {0o666 & ~umask}, modes
