"""Fixtures shared by the test suites."""
import os
import signal
from pathlib import Path

import pytest

#: Real data (chest CT, PA radiograph) lives beside the repository, never inside it.
#: ``XRAY2XRAY_SHARED_DATA`` points elsewhere (the mutation runner's scratch copies use it).
SHARED_DATA = Path(os.environ.get("XRAY2XRAY_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; tests using it skip on a fresh clone where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent "
                    "(a fresh clone has no ../shared/data)")
    return SHARED_DATA


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (the full acceptance suite CI runs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` of a child a test interrupts with SIGINT. A job started in the
    background (CI under ``nohup ... &``, cron) inherits SIGINT ignored, and Python then
    never installs its Ctrl-C handler, so the test would see the child run on; a user's
    Ctrl-C goes to a foreground process, whose SIGINT is live."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def live_sigint():
    """This process's SIGINT as in a terminal for the test's duration (restored after)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one thread is many times faster than two contended ones."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

