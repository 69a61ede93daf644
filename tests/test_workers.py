"""Inference workers as real Ray actors: same results as the model run directly, small results, clear errors."""
import numpy as np
import pytest
import ray

import models
from pipeline.sources import open_source, parse_source
from pipeline_helpers import HIGHWAY
from workers.inference import InferenceWorkerActor, instances

pytestmark = pytest.mark.usefixtures("pipeline_ray")
TINY = "configs/test_tiny.yaml"


@pytest.fixture(scope="module")
def frames():
    """Two real 720p frames and a small odd-sized crop, RGB uint8."""
    source = open_source(parse_source(str(HIGHWAY)))
    first, second = source.read().rgb, source.read().rgb
    source.close()
    return [first, second, np.ascontiguousarray(second[101:198, 203:350])]


def plain_values(value) -> bool:
    """True if `value` is built only of dicts, lists, str, int, float (no arrays, no pixels)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_values(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_values(v) for v in value)
    return type(value) in (str, int, float, bool)


def test_worker_gives_the_models_own_results_as_small_plain_values(frames):
    worker = InferenceWorkerActor.options(num_cpus=1).remote(TINY, None, 1.0)
    where = ray.get(worker.ready.remote())
    assert (where["device"], where["gpu_ids"], where["error"], where["threads"]) == ("cpu", [], None, 1)
    out = ray.get(worker.infer.remote([(ray.put(f[None]), 0) for f in frames]))
    ray.kill(worker)
    direct = models.load_model(TINY).predict(frames, masks="rle")
    assert len(out["frames"]) == 3 and set(out["timing_ms"]) == {"fetch", "inference"}
    assert plain_values(out["frames"])
    for got, want, frame in zip(out["frames"], direct, frames):
        assert got["instances"] == instances(want)
        assert len(got["instances"]) == 10  # the tiny config keeps every detection
        assert all(inst["mask"]["size"] == list(frame.shape[:2]) for inst in got["instances"])


def test_model_config_mistake_is_one_line_from_ready(tmp_path):
    bad = tmp_path / "bad_model.yaml"
    bad.write_text("name: broken\nbackbone: {depth: 42}\n")
    worker = InferenceWorkerActor.options(num_cpus=1).remote(str(bad), None, 1.0)
    answer = ray.get(worker.ready.remote())
    ray.kill(worker)
    assert answer["error"] == f"{bad}.backbone.depth: must be 18, 34, 50 or 101"


def test_weights_of_another_architecture_are_one_line_from_ready(tmp_path):
    other = models.load_config(TINY)
    other.class_names = other.class_names + ["bus"]
    weights = models.load_model(other).save(tmp_path / "five_classes.npz")
    worker = InferenceWorkerActor.options(num_cpus=1).remote(TINY, str(weights), 1.0)
    answer = ray.get(worker.ready.remote())
    ray.kill(worker)
    assert str(weights) in answer["error"] and "\n" not in answer["error"]
