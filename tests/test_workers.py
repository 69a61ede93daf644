"""Inference workers as real Ray actors: same results as the model run directly, small results, clear errors."""
import numpy as np
import pytest
import ray
from pycocotools import mask as mask_utils

import models
from pipeline.sources import open_source, parse_source
from tests.pipeline_helpers import HIGHWAY, OneThreadModelActor
from workers.device import native_bfloat16
from workers.frames import put_frames
from workers.inference import BatchResult, InferenceWorkerActor
from workers.results import InstanceRecord, instance_records, mask_colours

pytestmark = pytest.mark.usefixtures("ray_cluster")
TINY = "configs/test_tiny.yaml"


@pytest.fixture(scope="module")
def frames():
    """Two real 720p frames and a small odd-sized crop, RGB uint8."""
    source = open_source(parse_source(str(HIGHWAY)))
    first, second = source.read().rgb, source.read().rgb
    source.close()
    return [first, second, np.ascontiguousarray(second[101:198, 203:350])]


@pytest.mark.slow
def test_worker_gives_the_models_own_results_as_small_plain_records(frames):
    worker = InferenceWorkerActor.options(num_cpus=1).remote(TINY, None, 1.0)
    where = ray.get(worker.ready.remote())
    assert (where["device"], where["gpu_ids"], where["error"], where["threads"]) == ("cpu", [], None, 1)
    result = ray.get(worker.infer.remote([put_frames(f[None])[0] for f in frames]))
    ray.kill(worker)
    # the model called directly with the worker's one thread (see OneThreadModel)
    reference = OneThreadModelActor.remote(TINY)
    direct = ray.get(reference.predict.remote(frames))
    ray.kill(reference)
    assert isinstance(result, BatchResult) and (result.worker, result.pid) == (where["name"], where["pid"])
    assert len(result.instances) == 3 and set(result.timing_ms) == {"fetch", "inference"}
    for got, want, frame in zip(result.instances, direct, frames):
        assert len(got) == 10  # the tiny config keeps every detection
        assert got == instance_records(want)  # exactly the model's own results, in order
        # each with its mask's mean colour in its own frame (the tracker's cue; sampled: within a
        # few levels, see test_tracking's test of mask_colours)
        mean = np.array([frame[mask_utils.decode(inst.rle).astype(bool)].mean(axis=0) for inst in got])
        colours = np.array([inst.colour for inst in got])
        np.testing.assert_allclose(colours, mean, atol=12.0)
        assert np.abs(colours - mean).mean() < 3.0
        palettes = np.array([inst.palette for inst in got])    # and its palette (the tracker's gate)
        np.testing.assert_array_equal(palettes, mask_colours(frame, [inst.rle for inst in got])[1])
        assert all(type(inst) is InstanceRecord and plain(inst) for inst in got)  # no arrays, no pixels
        assert all(inst.rle["size"] == list(frame.shape[:2]) for inst in got)


@pytest.mark.slow
def test_precision_auto_runs_what_the_cpu_flags_say_and_ready_says_which(frames):
    # bfloat16 where /proc/cpuinfo lists AVX-512 BF16 or AMX, else the model config's own (float32)
    expected = "bfloat16" if native_bfloat16() else "float32"
    worker = InferenceWorkerActor.options(num_cpus=1).remote(TINY, None, 1, "auto")
    where = ray.get(worker.ready.remote())
    result = ray.get(worker.infer.remote([put_frames(frames[0][None])[0]]))
    ray.kill(worker)
    config = models.load_config(TINY)
    config.precision = expected
    reference = OneThreadModelActor.remote(config)
    direct = ray.get(reference.predict.remote(frames[:1]))
    ray.kill(reference)
    assert (where["precision"], where["error"]) == (expected, None)
    assert where["convolution"] == ("direct" if expected == "bfloat16" else "winograd 4x4")   # models/winograd.py
    # the scores differ between the precisions: equal results mean the worker computed in `expected`
    assert result.instances[0] == instance_records(direct[0])


def plain(instance: InstanceRecord) -> bool:
    """Built only of int, float, str (no numpy values, no arrays): small, and JSON as it is."""
    return (type(instance.class_id), type(instance.label), type(instance.score)) == (int, str, float) and \
        all(type(v) is float for v in instance.box) and type(instance.rle["counts"]) is str and \
        all(type(v) is int for v in instance.rle["size"]) and all(type(v) is float for v in instance.colour) and \
        all(type(v) is float for v in instance.palette)


@pytest.mark.slow
def test_model_config_mistake_is_one_line_from_ready(tmp_path):
    bad = tmp_path / "bad_model.yaml"
    bad.write_text("name: broken\nbackbone: {depth: 42}\n")
    worker = InferenceWorkerActor.options(num_cpus=1).remote(str(bad), None, 1.0)
    answer = ray.get(worker.ready.remote())
    ray.kill(worker)
    assert answer["error"] == f"{bad}.backbone.depth: must be 18, 34, 50 or 101"


@pytest.mark.slow
def test_weights_of_another_architecture_are_one_line_from_ready(tmp_path):
    other = models.load_config(TINY)
    other.class_names = other.class_names + ["bus"]
    weights = models.load_model(other).save(tmp_path / "five_classes.npz")
    worker = InferenceWorkerActor.options(num_cpus=1).remote(TINY, str(weights), 1.0)
    answer = ray.get(worker.ready.remote())
    ray.kill(worker)
    assert str(weights) in answer["error"] and "\n" not in answer["error"]
