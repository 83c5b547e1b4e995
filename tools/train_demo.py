"""Train the demo model's world model on all three real chest CTs (augmented) plus synthetic
phantoms: the recipe of the leave-one-patient-out folds (:mod:`lopo`), with no patient held out.

    python tools/train_demo.py [--work runs/demo2] [--steps 4000] [--augment 256]
                               [--phantoms SOURCE] [--set SECTION.KEY=VALUE] [--resume]
                               [--dry-run]

It writes ``WORK/train.csv`` (the three CTs of ``../shared/data``), runs ``xray2xray train``
into ``WORK/run`` (resumable: ``--resume`` continues from the last checkpoint, so a run can
span sessions), then prints the command that builds and installs the model file from it
(``tools/build_demo.py``: probe heads, calibration, OOD reference, volume prior, mean views).
A release script, not part of the installed package.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_cts  # noqa: E402
from child import run_child  # noqa: E402
from XrayWorldModel.data.anatomy import NAMED_RANGES  # noqa: E402
from XrayWorldModel.data.sources import anatomy_source  # noqa: E402

ROOT = real_cts.ROOT
#: The recipe (what the third leave-one-patient-out run trained with).
PHANTOMS = "phantom:128+phantom:128:1000:chest2"
AUGMENT = 256
STEPS = 4000
SETTINGS = ("views.radiograph_style=0.3",
            "views.deltas_deg=[-180,-150,-120,-90,-60,-30,30,60,90,120,150,180]")
VAL_SOURCE = "phantom:8:90000"


def train_command(work: Path, args) -> list:
    manifest = work / "train.csv"
    run = work / "run"
    cmd = [sys.executable, "-m", "XrayWorldModel", "train", "--config", "cpu-small",
           f"data.source={args.phantoms}+{anatomy_source(args.augment, manifest.resolve(), args.anatomy_ranges)}",
           f"data.val_source={VAL_SOURCE}", f"run.out_dir={run.resolve()}",
           f"optim.steps={args.steps}", *SETTINGS, *args.set]
    if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*.json")):
        if not args.resume:
            raise SystemExit(f"train_demo: {run} already holds a run; pass --resume to continue")
        cmd.append("--resume")
    return cmd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/demo2", help="folder for the run (default runs/demo2)")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS})")
    ap.add_argument("--augment", type=int, default=AUGMENT,
                    help=f"augmented patients made from each real CT (default {AUGMENT})")
    ap.add_argument("--anatomy-ranges", default="default", choices=sorted(NAMED_RANGES),
                    help="how far the augmented patients may differ from their CT (default: "
                         "default; wide: body build with the spread of adult chests)")
    ap.add_argument("--phantoms", default=PHANTOMS, help=f"synthetic source (default {PHANTOMS})")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="another training config override (repeatable)")
    ap.add_argument("--resume", action="store_true", help="continue the run in WORK")
    ap.add_argument("--dry-run", action="store_true", help="print the command only")
    args = ap.parse_args(argv)
    work = Path(args.work)
    cts = real_cts.paths()
    missing = [str(p) for p in cts.values() if not p.is_file()]
    if missing and not args.dry_run:
        raise SystemExit("train_demo: real CTs missing: " + ", ".join(missing))
    cmd = train_command(work, args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    real_cts.write_manifest(cts, work / "train.csv")
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    if run_child(cmd, cwd=ROOT) != 0:
        raise SystemExit("train_demo: training failed or was interrupted (rerun with --resume)")
    print(f"next: python tools/build_demo.py {work / 'run'} --version VERSION "
          f"--work {work / 'build'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
