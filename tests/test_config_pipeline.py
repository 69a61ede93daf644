"""Pipeline configuration and the command line: defaults, layering, overrides, one-line errors."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.config import ConfigError
from pipeline import run as run_command
from pipeline.config import load_pipeline_config

REPO = Path(__file__).resolve().parent.parent


def test_embedded_default_runs_a_model_on_generated_scenes():
    config = load_pipeline_config()
    assert Path(config.model.config).is_file()
    assert config.sources.uris == ["synthetic:"]
    assert config.publish.endpoint == "tcp://127.0.0.1:5555"
    assert config.sources.mode == "auto"
    # the overlay video takes each source's own frame rate unless output.overlay_fps says otherwise
    assert (config.output.overlay_fps, config.publish.linger_ms, config.metrics_host) == (None, 1000, "127.0.0.1")


def test_the_default_yaml_names_every_key_the_config_has():
    """configs/default.yaml is where a user reads the tunables: it lists every one."""
    import dataclasses

    import yaml

    from pipeline.config import DEFAULT_CONFIG, PipelineConfig

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
                yield from keys(f.default_factory, prefix + f.name + ".")
            else:
                yield prefix + f.name

    def yaml_keys(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from yaml_keys(value, prefix + key + ".")
            else:
                yield prefix + key

    assert sorted(yaml_keys(yaml.safe_load(DEFAULT_CONFIG.read_text()))) == sorted(keys(PipelineConfig))


def test_user_yaml_is_laid_over_the_default_with_paths_from_its_folder(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "my.yaml").write_text(
        "model: {weights: weights/w.npz}\n"
        "sources: {uris: [clips, front=clip.avi, 'synthetic:seed=2', 'rtsp://cam/1']}\n"
        "batching: {max_batch: 8}\n")
    config = load_pipeline_config(tmp_path / "my.yaml")
    assert config.model.weights == str(tmp_path / "weights/w.npz")
    assert config.model.config == load_pipeline_config().model.config  # kept from the default
    assert config.sources.uris == [str(tmp_path / "clips"), f"front={tmp_path / 'clip.avi'}",
                                   "synthetic:seed=2", "rtsp://cam/1"]
    assert (config.batching.max_batch, config.batching.max_wait_ms) == (8, 10.0)


def test_set_overrides_are_read_as_yaml():
    config = load_pipeline_config(None, ["batching.max_wait_ms=2.5", "output.dir=out", "output.overlay=true",
                                         "sources.uris=[a.avi, b.avi]", "metrics_port=9100",
                                         "publish.curve_keys=null"])
    assert config.batching.max_wait_ms == 2.5
    # paths from the command line are taken from the current directory, made absolute for the actors
    assert (config.output.dir, config.output.overlay) == (str(Path.cwd() / "out"), True)
    assert config.sources.uris == [str(Path.cwd() / "a.avi"), str(Path.cwd() / "b.avi")]
    assert config.metrics_port == 9100


@pytest.mark.parametrize("overrides, message", [
    (["batching.max_batch=0"], "config.batching.max_batch: must be >= 1"),
    (["batching.max_batch=four"], "config.batching.max_batch: expected an integer, got 'four'"),
    (["batching.max_bacth=4"], "config.batching.max_bacth: unknown key (known: batches_per_worker, max_batch,"),
    (["sources.mode=fast"], "config.sources.mode: must be one of auto, offline, live"),
    (["output.skip_done=true"], "config.output.skip_done: needs output.dir"),
    (["sources.max_open=-1"], "config.sources.max_open: must be >= 0 (0 opens every stream at once)"),
    (["sources.uris=[]"], "config.sources.uris: needs at least one source"),
    (["workers.device=tpu"], "config.workers.device: must be one of auto, gpu, cpu"),
    (["output.overlay=true"], "config.output.overlay: needs output.dir"),
    (["metrics_port=70000"], "config.metrics_port: must be a TCP port"),
    (["sources.reconnect_max_s=0.1"], "config.sources: need 0 < reconnect_initial_s <= reconnect_max_s"),
    (["batching=3"], "config.batching: expected a mapping, got int"),
    (["max_batch"], "--set max_batch: expected key=value"),
    (["verbose.level=1"], "--set verbose.level=1: verbose is not a section"),
    (["version=2"], "config.version: is 2; this maskstream reads version 1 configurations"),
    (["output.overlay_fps=0"], "config.output.overlay_fps: must be positive"),
    (["publish.linger_ms=-5"], "config.publish.linger_ms: must be >= 0, or -1"),
    (["publish.images=png"], "config.publish.images: must be one of none, jpeg"),
    (["publish.jpeg_quality=0"], "config.publish.jpeg_quality: must be 1-100"),
    (["publish.image_max_side=0"], "config.publish.image_max_side: must be >= 1"),
])
def test_mistakes_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_pipeline_config(None, overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_mistake_in_a_config_file_names_the_file(tmp_path):
    """An unknown key or a wrong type in --config FILE says which file; one the command line sets
    later (--set) can still make the file's values whole (overlay in the file, the folder given by --out)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers:\n  cpuz: 2\n")
    with pytest.raises(ConfigError) as error:
        load_pipeline_config(bad)
    assert str(error.value).startswith(f"{bad}: workers.cpuz: unknown key (known: count, cpus,")
    bad.write_text("batching:\n  max_batch: four\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: batching.max_batch: expected an integer, got 'four'"):
        load_pipeline_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("output:\n  overlay: true\n")
    assert load_pipeline_config(good, ["output.dir=o"]).output.overlay is True
    # A value out of range in the file is the file's; one the command line sets is not.
    bad.write_text("batching:\n  max_batch: 0\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(bad))}: batching.max_batch: must be >= 1$"):
        load_pipeline_config(bad)
    with pytest.raises(ConfigError, match="^config.batching.max_batch: must be >= 1$"):
        load_pipeline_config(good, ["output.dir=o", "batching.max_batch=0"])
    with pytest.raises(ConfigError, match=f"^{re.escape(str(good))}: output.overlay: needs output.dir$"):
        load_pipeline_config(good)


def test_malformed_and_missing_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  uris: [a\n  mode: live\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+\)"):
        load_pipeline_config(bad)
    with pytest.raises(ConfigError, match="nothere.yaml: no such config file"):
        load_pipeline_config(tmp_path / "nothere.yaml")


def test_command_line_flags_map_onto_the_config():
    args = run_command.parse_args([
        "--source", "cam=0", "--source", "b c.avi", "--publish", "tcp://127.0.0.1:6000", "--mode", "live",
        "--workers", "3", "--max-batch", "2", "--max-wait-ms", "5", "--out", "o", "--video",
        "--curve-keys", "keys", "--metrics-port", "9200", "--ray-address", "auto", "--verbose",
        "--metrics-address", "0.0.0.0", "--wait-subscribers", "2", "--classes", "person, car",
        "--skip-done", "--set", "sources.max_frames=7"])
    config = load_pipeline_config(None, run_command.overrides(args))
    assert config.sources.uris == ["cam=0", str(Path.cwd() / "b c.avi")]
    assert (config.publish.endpoint, config.publish.curve_keys) == ("tcp://127.0.0.1:6000", str(Path.cwd() / "keys"))
    assert (config.sources.mode, config.sources.max_frames) == ("live", 7)
    assert (config.workers.count, config.batching.max_batch, config.batching.max_wait_ms) == (3, 2, 5.0)
    assert (config.output.dir, config.output.overlay, config.output.skip_done) == (str(Path.cwd() / "o"), True, True)
    assert (config.metrics_port, config.ray_address, config.verbose) == (9200, "auto", True)
    assert (config.metrics_host, config.publish.wait_subscribers) == ("0.0.0.0", 2)
    assert config.model.classes == ["person", "car"]


def test_no_flags_means_the_embedded_default():
    assert load_pipeline_config(None, run_command.overrides(run_command.parse_args([]))) == load_pipeline_config()


@pytest.mark.slow
def test_cli_reports_a_config_mistake_in_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("batching: {max_batch: -1}\n")
    for command in (["run_pipeline.py"], ["-m", "pipeline.cli", "run"]):
        done = subprocess.run([sys.executable, *command, "--config", str(bad)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert done.stderr == f"error: {bad}: batching.max_batch: must be >= 1\n"   # the file's mistake, named so


def test_score_threshold_overrides_the_models_own():
    from pipeline.runner import check_model_inputs
    config = load_pipeline_config(None, ["model.config=configs/test_tiny.yaml", "model.weights=null",
                                         "model.score_threshold=0.6"])
    assert check_model_inputs(config).box_head.score_threshold == 0.6
    with pytest.raises(ConfigError, match="score_threshold: must be in"):
        load_pipeline_config(None, ["model.score_threshold=1.5"])


def test_classes_reach_the_model_and_a_class_it_does_not_have_is_one_line():
    from pipeline.runner import check_model_inputs
    config = load_pipeline_config(None, ["model.config=configs/test_tiny.yaml", "model.classes=[person]"])
    model_config = check_model_inputs(config)
    assert (model_config.box_head.classes, model_config.detected_class_ids) == (["person"], (2,))
    assert check_model_inputs(load_pipeline_config(None, ["model.config=configs/test_tiny.yaml"])).box_head.classes is None
    config = load_pipeline_config(None, ["model.config=configs/test_tiny.yaml", "model.classes=[people]"])
    with pytest.raises(ConfigError, match=r"^model.classes: 'people' is not a class of .*test_tiny.yaml "
                                          r"\(did you mean 'person'\?\)$"):
        check_model_inputs(config)
