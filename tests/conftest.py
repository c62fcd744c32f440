import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# CI tries the same examples on every run, so its verdict is the commit's, not the draw's; runs
# elsewhere keep exploring new ones. Generating them on a loaded machine is slow, not wrong.
settings.register_profile("ci", derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "explore")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets beside the checkout (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the real-data tests need the shared data folder")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (never a running cluster). Without CUDA
    it is told of 2 GPUs, which it only schedules by (tests/test_planner.py checks how it packs
    them), and trials that get one train on the CPU; on a CUDA machine it has the real cards."""
    import ray
    import torch

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=None if torch.cuda.is_available() else 2,
                 include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
