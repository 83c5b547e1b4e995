"""Mutation check: put each deliberate bug of ``catalogue.py`` into a scratch copy of the
repository, run the tests named for it, and print whether the suite caught it.

    python Testing/mutations/run.py              # every mutation
    python Testing/mutations/run.py --only ID    # one (repeatable)
    python Testing/mutations/run.py --list       # the catalogue, nothing run

Exit status 0 only when every mutation was caught and every anchor was found exactly once.
The tests named for a mutation are first run on the unmutated copy; if they fail there, the
mutation is reported as such, not as caught.
An anchor that is missing or ambiguous (the code moved) is reported as such, never as
caught. The checkout itself is never modified.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from catalogue import MUTATIONS, Mutation  # noqa: E402

#: pytest's exit status when tests ran and at least one failed.
TESTS_FAILED = 1
#: The last pytest output of each test set (shown when the unmutated tests fail).
LAST_OUTPUT: Dict[tuple, str] = {}


def tracked_files(repo: Path) -> List[str]:
    """Files git tracks plus untracked ones it does not ignore (what a commit would hold)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line and (repo / line).is_file()]


def make_scratch(repo: Path, dest: Path) -> None:
    for rel in tracked_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)


def shared_data(repo: Path) -> Optional[str]:
    found = os.environ.get("XRAY2XRAY_SHARED_DATA") or str(repo.parent / "shared" / "data")
    return found if Path(found).is_dir() else None


def run_tests(scratch: Path, tests: List[str], timeout: float) -> int:
    env = dict(os.environ, PYTHONPATH=str(scratch), PYTHONDONTWRITEBYTECODE="1")
    data = shared_data(REPO)
    if data:
        env["XRAY2XRAY_SHARED_DATA"] = data
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--run-slow",
           *tests]
    try:
        done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1
    if done.returncode not in (0, TESTS_FAILED) or os.environ.get("MUTATION_VERBOSE"):
        print(done.stdout[-3000:], file=sys.stderr)
    LAST_OUTPUT[tuple(tests)] = done.stdout
    return done.returncode


def check(m: Mutation, scratch: Path, timeout: float, baseline: Dict[tuple, int]) -> str:
    """Apply ``m`` in ``scratch``, run its tests, restore the file; returns the verdict.

    The named tests must pass on the unmutated copy first (``baseline`` caches that per test
    set), or a failure would prove nothing about the mutation."""
    path = scratch / m.file
    if not path.is_file():
        return "file missing"
    original = path.read_text(encoding="utf-8")
    count = original.count(m.anchor)
    if count != 1:
        return "anchor missing" if count == 0 else f"anchor ambiguous ({count}x)"
    if m.tests not in baseline:
        baseline[m.tests] = run_tests(scratch, list(m.tests), timeout)
    if baseline[m.tests] != 0:
        print(LAST_OUTPUT.get(m.tests, "")[-3000:], file=sys.stderr)
        return f"tests fail without the mutation (pytest exit {baseline[m.tests]})"
    path.write_text(original.replace(m.anchor, m.replacement), encoding="utf-8")
    try:
        rc = run_tests(scratch, list(m.tests), timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    if rc == TESTS_FAILED:
        return "caught"
    if rc == 0:
        return "NOT CAUGHT"
    return "timeout" if rc == -1 else f"error (pytest exit {rc})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], metavar="ID")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutation")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    unknown = set(args.only) - {m.id for m in MUTATIONS}
    if unknown:
        ap.error(f"unknown mutation id(s): {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.id:28s} {m.file}  [{', '.join(m.tests)}]\n    {m.invariant}")
        return 0
    rows, ok, baseline = [], True, {}
    with tempfile.TemporaryDirectory(prefix="xray2xray-mutants-") as tmp:
        scratch = Path(tmp)
        make_scratch(REPO, scratch)
        for m in chosen:
            t0 = time.perf_counter()
            verdict = check(m, scratch, args.timeout, baseline)
            ok &= verdict == "caught"
            rows.append((m.id, m.file, verdict, time.perf_counter() - t0))
            print(f"{m.id}: {verdict} ({rows[-1][3]:.0f} s)", file=sys.stderr, flush=True)
    print("| mutation | file | result | s |\n|---|---|---|---|")
    for rid, file, verdict, secs in rows:
        print(f"| {rid} | `{file}` | {verdict} | {secs:.0f} |")
    caught = sum(r[2] == "caught" for r in rows)
    print(f"\n{caught} of {len(rows)} mutations caught")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
