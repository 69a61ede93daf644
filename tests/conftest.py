"""Shared fixtures. Keep each block small and say whose tests it serves."""
import sys
from pathlib import Path

import pytest
import ray

# Helper modules beside the tests (pipeline_helpers, wire_helpers) import by their plain names,
# whether or not tests/ is a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))


# -- pipeline core tests (ingest, workers, end to end) ---------------------------------------
@pytest.fixture(scope="session")
def pipeline_ray():
    """One Ray instance for the whole session, started on first use (or the one already running).

    Four logical CPUs on this 2-core machine: two inference workers (one CPU each) plus the
    CPU-less ingest and publisher actors fit at once.
    """
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    yield
    if ray.is_initialized():
        ray.shutdown()
