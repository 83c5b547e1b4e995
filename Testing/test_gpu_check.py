"""The GPU check (Testing/benchmarks/gpu_check.py) in its dry-run mode: the same code paths on
the CPU at tiny sizes, so the script is known to work when a GPU is at hand for a few
minutes. No GPU is needed here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent / "benchmarks" / "gpu_check.py"
REPO = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow   # ~50 s: four child processes; CI runs it (--run-slow)
def test_dry_run_runs_every_part_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "gc"
    r = _run(["--dry-run", "--out", str(out), "--threads", "1"], tmp_path)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["drr", "train", "torchrun", "infer"]
    assert all(p["status"] == "ok" for p in parts.values()), {k: p["status"] for k, p in parts.items()}
    assert report["meta"]["dry_run"] and report["meta"]["device"] == "cpu"
    assert all(p["wall_s"] <= p["budget_s"] for p in parts.values())
    drr = parts["drr"]["rows"]
    assert [row["size"] for row in drr] == [24, 32]
    assert all(row["drr_per_s"] > 0 and 0 <= row["rel_l2_vs_exact"] < 0.2 for row in drr)
    train = parts["train"]
    assert train["config"] == "paper" and train["steps"] == 2 and 0 < train["render_share"] < 1
    run = parts["torchrun"]
    assert run["backend"] == "gloo" and run["resumed"] and run["steps_logged"] == [1, 2, 3]
    assert parts["infer"]["fresh_rc"] == 0 and parts["infer"]["in_process_ms"] > 0
    md = (out / "gpu_check.md").read_text()
    for heading in ("CUDA DRR renderer", "Training, `paper` config", "torchrun --nproc_per_node 1",
                    "Inference on"):
        assert heading in md
    assert r.stdout.strip() == md.strip()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_the_real_run_says_to_use_dry_run(tmp_path):
    r = _run(["--out", str(tmp_path / "gc"), "--parts", "drr"], tmp_path, timeout=300)
    assert r.returncode == 2
    assert "no CUDA device" in r.stderr and "--dry-run" in r.stderr
