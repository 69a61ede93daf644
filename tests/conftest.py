"""Shared fixtures. Keep each block small and say whose tests it serves."""
import pytest
import ray


@pytest.fixture(scope="session")
def ray_cluster():
    """The one Ray instance of the test session, started on first use (or the one already running).

    Four logical CPUs on this 2-core machine: two inference workers (one CPU each), a reference
    model actor and the CPU-less ingest and publisher actors fit at once.
    """
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    yield
    if started:
        ray.shutdown()
