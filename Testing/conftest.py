"""Fixtures shared by the test suites."""
from pathlib import Path

import pytest

#: Real data (chest CT, PA radiograph) lives beside the repository, never inside it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; tests using it skip on a fresh clone where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent "
                    "(a fresh clone has no ../shared/data)")
    return SHARED_DATA
