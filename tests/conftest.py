import os
from pathlib import Path

import pytest

from trainer.dataset import DATA_ROOT as DATA  # $XRAY_DATA, else ../shared/data

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Without the dataset, data tests are skipped locally but fail in CI (CI always has it)."""
    if DATA.is_dir():
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"dataset not found at {DATA}; CI must run beside shared/data")
    skip = pytest.mark.skip(reason=f"dataset not found at {DATA}")
    for item in items:
        if "data" in item.fixturenames:
            item.add_marker(skip)


#: Test-split scans shipped with the package (tests that need only these run without the dataset).
SAMPLES = ROOT / "xray_infer" / "samples"


@pytest.fixture(scope="session")
def data():
    return DATA


@pytest.fixture(scope="session")
def samples():
    return SAMPLES
