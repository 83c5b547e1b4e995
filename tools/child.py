"""Run a long child command (a training run) so that stopping the tool stops it cleanly.

Why: ``lopo.py`` and ``train_demo.py`` run ``xray2xray train`` as a child process. A SIGTERM
or SIGINT sent to the tool alone (``kill PID``, a batch system's time limit) used to end the
tool and leave the training running on as an orphan, still holding the cores. Here the tool
passes the signal on, waits for the child to write its interrupt checkpoint, and exits with
the child's code.
"""
from __future__ import annotations

import signal
import subprocess
from typing import Sequence

FORWARDED = (signal.SIGTERM, signal.SIGINT)


def run_child(cmd: Sequence[str], **popen_kwargs) -> int:
    """``cmd``'s exit code; SIGTERM/SIGINT received meanwhile are forwarded to it."""
    child = subprocess.Popen(list(cmd), **popen_kwargs)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
