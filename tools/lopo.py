"""Leave one patient out over the three real chest CTs (issue 12): for each patient, train on
the other two (augmented) plus synthetic phantoms, then score the model on the held-out one.

    python tools/lopo.py --work runs/lopo [--steps N] [--config cpu-small] [--resume]
                         [--folds chest_ct,lidc_idri_0314] [--phantoms 512] [--augment 64]
    python tools/lopo.py --work DIR --skip-train --model xray2xray-demo    # evaluation only
    python tools/lopo.py --work DIR --skip-train --model DIR/ID/run --folds ID
                         # re-evaluate a fold's own run; its training record is kept
    python tools/lopo.py --work DIR --dry-run                               # print the plan
    python tools/lopo.py --work DIR --folds ID --train-on OTHER_ID          # one training patient

Per fold, under ``WORK/<held-out id>/``:

1. ``train.csv``: a manifest of the two training CTs (never the held-out one);
2. ``xray2xray train --config CONFIG data.source=phantom:P+anatomy:K:train.csv
   data.val_source=phantom:8:90000 run.out_dir=run [optim.steps=N]``: P phantoms and K
   augmented patients per training CT (validation on phantoms, so that nothing of the
   held-out patient picks a checkpoint); with ``--resume`` a fold whose run exists continues
   from its last checkpoint, so the protocol can span sessions;
3. ``xray2xray eval-views --model run --data HELD_OUT --angles 30,60,90,120,150``: the
   views predicted from the held-out CT's 0 deg DRR against the copy baseline and the mean
   training view (the run's own training mix), and once more with ``--baseline-source
   train.csv`` (the mean view of the two real training CTs, un-augmented). The margin is the
   model's PSNR minus the best of the three baselines;
4. ``xray2xray eval-volume --model run --data HELD_OUT --baseline-source train.csv``: Pearson
   r of the volume from the 0 deg view against the held-out CT, against the mean-CT
   baseline: the voxel-wise mean of the two training CTs, each centred and resampled into the
   evaluation grid (a run folder has no stored prior, so the reconstruction starts from that
   same mean).

The evaluation uses each run's latest checkpoint. Results go to ``WORK/lopo.json`` and a
markdown table ``WORK/lopo.md``, with the issue's acceptance checks beside the numbers.
A release script, not part of the installed package.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_cts  # noqa: E402
from child import run_child  # noqa: E402
from XrayWorldModel.data.anatomy import NAMED_RANGES  # noqa: E402
from XrayWorldModel.data.sources import anatomy_source  # noqa: E402

DATA_DIR = real_cts.DATA_DIR
#: The three patients: id -> path under the data folder.
PATIENTS = {pid: ct.file for pid, ct in real_cts.PATIENTS.items()}
TARGETS = (30.0, 60.0, 90.0, 120.0, 150.0)
#: Validation phantoms: seeds no reported figure and no other tool uses.
VAL_SOURCE = "phantom:8:90000"
#: Acceptance thresholds of issue 12.
MARGIN_90_DB, MEAN_MARGIN_DB, MIN_R, R_OVER_MEAN = 1.5, 1.0, 0.80, 0.05


@dataclass(frozen=True)
class Fold:
    """One held-out patient and the patients it trains on (id -> CT path)."""

    held_out: str
    held_out_path: Path
    train: Dict[str, Path]


def build_folds(patients: Dict[str, Path], only: Optional[Sequence[str]] = None,
                train_on: Optional[Sequence[str]] = None) -> List[Fold]:
    """One fold per patient (or per id in ``only``): that patient held out, all others (or
    those of them in ``train_on``: how much do more patients teach?) to train on."""
    for what, ids in (("fold", only), ("training patient", train_on)):
        unknown = sorted(set(ids or ()) - set(patients))
        if unknown:
            raise SystemExit(f"lopo: unknown {what} {', '.join(unknown)} "
                             f"(known: {', '.join(patients)})")
    folds = [Fold(pid, Path(path), {k: Path(v) for k, v in patients.items()
                                    if k != pid and (not train_on or k in train_on)})
             for pid, path in patients.items() if not only or pid in only]
    empty = [f.held_out for f in folds if not f.train]
    if empty:
        raise SystemExit(f"lopo: fold {', '.join(empty)} would train on no real patient "
                         f"(--train-on lists only the held-out one)")
    return folds


def write_manifest(fold: Fold, folder: Path) -> Path:
    """``folder/train.csv``: the fold's training CTs (``id``, absolute ``path``)."""
    return real_cts.write_manifest(fold.train, folder / "train.csv")


def _cli(*args) -> List[str]:
    return [sys.executable, "-m", "XrayWorldModel", *map(str, args)]


def synthetic_source(phantoms: str) -> str:
    """``--phantoms``: a count (``512``: the default chest) or a source of its own
    (``phantom:256+phantom:256:0:chest2``)."""
    return f"phantom:{phantoms}" if str(phantoms).isdigit() else str(phantoms)


def train_command(args, manifest: Path, run: Path) -> List[str]:
    """The fold's ``xray2xray train`` command (``--resume`` when its run exists)."""
    cmd = _cli("train", "--config", args.config,
               f"data.source={synthetic_source(args.phantoms)}+"
               f"{anatomy_source(args.augment, manifest, args.anatomy_ranges)}",
               f"data.val_source={VAL_SOURCE}", f"run.out_dir={run}",
               *([f"optim.steps={args.steps}"] if args.steps else []), *args.set)
    if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*.json")):
        if not args.resume:
            raise SystemExit(f"lopo: {run} already holds a run; pass --resume to continue it")
        cmd.append("--resume")
    return cmd


def eval_commands(model: str, fold: Fold, manifest: Path) -> Dict[str, List[str]]:
    """The fold's evaluation commands, by result name."""
    angles = ",".join(f"{a:g}" for a in TARGETS)
    views = _cli("eval-views", "--model", model, "--data", fold.held_out_path, "--angles", angles)
    return {"views": views,
            "views_real_mean": views + ["--baseline-source", str(manifest)],
            "volume": _cli("eval-volume", "--model", model, "--data", fold.held_out_path,
                           "--baseline-source", str(manifest))}


def _run_json(cmd: List[str]) -> Dict:
    """Run an evaluation command (its stderr shown as it goes); its stdout JSON."""
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"lopo: command failed (exit {out.returncode}): {shlex.join(cmd)}")
    return json.loads(out.stdout)


def summarise(views: Dict, views_real: Dict, volume: Dict) -> Dict:
    """Per-angle PSNR/SSIM of the model and the three view baselines, the margin over the
    best, the volume r against the mean CT, and the issue's checks."""
    rows = {}
    for key, row in views["angles"].items():
        real = views_real["angles"][key]
        base = {"copy_input": (row["copy_input_psnr"], row["copy_input_ssim"]),
                "mean_view_training": (row["mean_view_psnr"], row["mean_view_ssim"]),
                "mean_view_real_train_cts": (real["mean_view_psnr"], real["mean_view_ssim"])}
        base = {k: v for k, v in base.items() if v[0] is not None}
        best = max(base, key=lambda k: base[k][0])
        rows[key] = {"world_model": [row["world_model_psnr"], row["world_model_ssim"]],
                     **{k: list(v) for k, v in base.items()}, "best_baseline": best,
                     "margin_db": row["world_model_psnr"] - base[best][0],
                     "ssim_above_all": all(row["world_model_ssim"] > v[1] for v in base.values())}
    margins = [r["margin_db"] for r in rows.values()]
    wm_r, mean_r = volume["world_model"]["pearson_r"], volume["mean_ct"]["pearson_r"]
    at90 = rows.get("90")
    checks = {"margin_90_ge_1.5dB": bool(at90 and at90["margin_db"] >= MARGIN_90_DB),
              "ssim_90_above_baselines": bool(at90 and at90["ssim_above_all"]),
              "mean_margin_ge_1.0dB": sum(margins) / len(margins) >= MEAN_MARGIN_DB,
              "volume_r_ge_0.80": wm_r >= MIN_R,
              "volume_r_ge_mean_ct_plus_0.05": wm_r >= mean_r + R_OVER_MEAN}
    return {"views": rows, "mean_margin_db": sum(margins) / len(margins),
            "volume": {"world_model_r": wm_r, "mean_ct_r": mean_r,
                       "world_model_fdk_only_r": volume["world_model_fdk_only"]["pearson_r"],
                       "world_model_on_prior_r": volume.get("world_model_on_prior",
                                                            volume["world_model"])["pearson_r"],
                       "prior": volume.get("prior"),
                       "mean_ct_source": volume.get("mean_ct_source")},
            "checks": checks, "passed": all(checks.values())}


def _prior_used(prior) -> str:
    """Whether the fold's reconstruction used the mean-CT prior, and the validation r's."""
    if not prior:
        return "yes (before validation)"
    v = prior.get("validation")
    said = "yes" if prior.get("used", True) else "no"
    return said if not v else f"{said} ({v['r_on_prior']:.3f} vs {v['r_views_only']:.3f} on {v['source']})"


def markdown(results: Dict) -> str:
    """The results table: per fold and target angle, PSNR/SSIM of the model and baselines."""
    lines = ["| held out | target | world model | copy input | mean view (training mix) | "
             "mean view (2 real training CTs) | margin over best |", "|---|---:|---|---|---|---|---:|"]
    for fid, fold in results["folds"].items():
        for key, r in fold["views"].items():
            cells = [f"{r[k][0]:.2f} / {r[k][1]:.3f}" if k in r else "n/a"
                     for k in ("world_model", "copy_input", "mean_view_training",
                               "mean_view_real_train_cts")]
            lines.append(f"| {fid} | {key} deg | " + " | ".join(cells) + f" | {r['margin_db']:+.2f} dB |")
    lines += ["", "| held out | mean margin (30-150) | volume r | mean-CT r | FDK-only r | "
              "on mean-CT prior r | prior used | checks |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for fid, fold in results["folds"].items():
        v = fold["volume"]
        failed = [k for k, ok in fold["checks"].items() if not ok]
        lines.append(f"| {fid} | {fold['mean_margin_db']:+.2f} dB | {v['world_model_r']:.3f} | "
                     f"{v['mean_ct_r']:.3f} | {v['world_model_fdk_only_r']:.3f} | "
                     f"{v.get('world_model_on_prior_r', v['world_model_r']):.3f} | "
                     f"{_prior_used(v.get('prior'))} | "
                     f"{'pass' if not failed else 'fail: ' + ', '.join(failed)} |")
    return "\n".join(lines) + "\n"


def run_fold(fold: Fold, args) -> Optional[Dict]:
    """Train (unless ``--skip-train``) and evaluate one fold; None in a dry run."""
    folder = Path(args.work) / fold.held_out
    manifest = write_manifest(fold, folder) if not args.dry_run else folder / "train.csv"
    run = folder / "run"
    cmds = {} if args.skip_train else {"train": train_command(args, manifest, run)}
    cmds.update(eval_commands(args.model or str(run), fold, manifest))
    if args.dry_run:
        print(f"# fold {fold.held_out}: held out {fold.held_out_path}; {manifest} lists "
              + ", ".join(f"{k}={v}" for k, v in fold.train.items()))
        for cmd in cmds.values():
            print(shlex.join(cmd))
        return None
    t0 = time.time()
    if "train" in cmds:
        print("$ " + shlex.join(cmds["train"]), file=sys.stderr, flush=True)
        if run_child(cmds["train"], cwd=ROOT) != 0:
            raise SystemExit(f"lopo: training fold {fold.held_out} failed")
    t1 = time.time()
    out = {k: _run_json(cmds[k]) for k in ("views", "views_real_mean", "volume")}
    summary = summarise(out["views"], out["views_real_mean"], out["volume"])
    return {"held_out": str(fold.held_out_path), "train": {k: str(v) for k, v in fold.train.items()},
            "model": args.model or str(run), "commands": {k: shlex.join(c) for k, c in cmds.items()},
            "train_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1), **summary,
            "raw": out}


def keep_training_record(previous: Optional[Dict], got: Dict, settings: Dict) -> Dict:
    """``got`` (a fold evaluated now) with how its model was trained: this run's
    ``settings`` after training, or, when only evaluating (no train command) the model an
    earlier run of this fold trained, that run's train command, time and settings, so a
    re-evaluation (after the evaluation changed) does not lose them."""
    same_model = previous is not None and \
        Path(str(previous.get("model", ""))).resolve() == Path(str(got["model"])).resolve()
    if "train" in got["commands"] or not same_model or "train" not in previous.get("commands", {}):
        return dict(got, settings=settings)
    return dict(got, commands={"train": previous["commands"]["train"], **got["commands"]},
                train_s=previous.get("train_s"), settings=previous.get("settings", settings),
                re_evaluated=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/lopo", help="folder for the folds (default runs/lopo)")
    ap.add_argument("--config", default="cpu-small", help="training config (default cpu-small)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    ap.add_argument("--phantoms", default="512",
                    help="synthetic phantoms: a count of default chests, or a phantom source "
                         "such as phantom:256+phantom:256:0:chest2 (default 512)")
    ap.add_argument("--augment", type=int, default=64,
                    help="augmented patients made from each training CT (default 64)")
    ap.add_argument("--anatomy-ranges", default="default", choices=sorted(NAMED_RANGES),
                    help="how far the augmented patients may differ from their CT (default: "
                         "default; wide: body build with the spread of adult chests)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="another training config override (repeatable)")
    ap.add_argument("--folds", default=None, help="comma-separated held-out ids (default: all 3)")
    ap.add_argument("--train-on", default=None,
                    help="comma-separated ids: train each fold on those of the other patients "
                         "only (default: all others); the held-out one is never trained on")
    ap.add_argument("--resume", action="store_true", help="continue folds whose run exists")
    ap.add_argument("--skip-train", action="store_true", help="evaluate --model only")
    ap.add_argument("--model", default=None, help="with --skip-train: the model to evaluate")
    ap.add_argument("--data-dir", default=str(DATA_DIR), help=f"real CTs (default {DATA_DIR})")
    ap.add_argument("--dry-run", action="store_true", help="print the manifests and commands only")
    args = ap.parse_args(argv)
    if args.skip_train != bool(args.model):
        ap.error("--skip-train and --model go together")
    args.work = str(Path(args.work).resolve())       # the commands run from the checkout
    patients = {k: (Path(args.data_dir) / v).resolve() for k, v in PATIENTS.items()}
    missing = [str(p) for p in patients.values() if not p.is_file()]
    if missing and not args.dry_run:
        raise SystemExit(f"lopo: real CTs missing: {', '.join(missing)}")
    folds = build_folds(patients, args.folds.split(",") if args.folds else None,
                        args.train_on.split(",") if args.train_on else None)
    work = Path(args.work)
    results = {"protocol": "leave one patient out (tools/lopo.py)", "targets_deg": list(TARGETS),
               "folds": {}}
    if (work / "lopo.json").is_file():       # folds run in earlier sessions are kept
        results["folds"] = json.loads((work / "lopo.json").read_text()).get("folds", {})
    for fold in folds:
        got = run_fold(fold, args)
        if got is not None:
            settings = {"config": args.config, "steps": args.steps, "train_on": args.train_on,
                        "phantoms": args.phantoms, "augment": args.augment, "set": args.set}
            got = keep_training_record(results["folds"].get(fold.held_out), got, settings)
            results["folds"][fold.held_out] = got
            (work / "lopo.json").write_text(json.dumps(results, indent=1))
    if args.dry_run:
        return 0
    (work / "lopo.json").write_text(json.dumps(results, indent=1))
    (work / "lopo.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {work / 'lopo.json'} and {work / 'lopo.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
