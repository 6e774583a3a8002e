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


from helpers import PRECISIONS, SAMPLE_DIR  # noqa: E402


@pytest.fixture(scope="session", params=PRECISIONS)
def precision(request):
    """Each variant in turn, for the checks that compare numbers (helpers.PRECISIONS)."""
    return request.param


@pytest.fixture(scope="session")
def data():
    return DATA


@pytest.fixture(scope="session")
def samples():
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray for the whole test session, with fixed resources (2 CPUs, no GPU), as
    Ray's testing guide advises; tests in this process use it, CLI runs join it by address."""
    import ray
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
