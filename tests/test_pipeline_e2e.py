"""The whole pipeline, for real: Ray actors, the tiny model, ZeroMQ on 127.0.0.1, a real subscriber
(which checks every message against the protocol's JSON Schema).

Each run uses the tiny test model with seeded random weights (10 detections per frame) and
trims its sources to a few frames.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray
from pycocotools.coco import COCO

from models.errors import PipelineError
from pipeline.config import load_pipeline_config
from pipeline.metrics import STAGES
from pipeline.protocol import EndOfStream
from pipeline.runner import run
from pipeline.sources import open_source, parse_source
from tests.pipeline_helpers import (
    DATA,
    PEDESTRIANS,
    TINY,
    BackgroundRun,
    MjpegCamera,
    OneThreadModelActor,
    actor_pids,
    assert_same_instances,
    config_for,
    free_port,
)
from tests.wire_helpers import Consumer
from workers.results import instance_records

pytestmark = pytest.mark.usefixtures("ray_cluster")
REPO = Path(__file__).resolve().parent.parent
RECEIVE_LIMIT_S = 180  # a consumer idle this long gives up: a guard against a hung run, not a timing


def receive(consumer) -> dict[str, list]:
    """Every message until each stream the consumer names has sent EOS: {stream: [frames..., eos]}."""
    by_stream = {}
    for message in consumer.messages():
        by_stream.setdefault(message.stream, []).append(message)
    return by_stream


def assert_complete_in_order(messages: list, frames: int, reason: str = "end"):
    """Seqs 0..frames-1 exactly once and in order, then EOS counting them and saying why it ended."""
    *published, eos = messages
    assert isinstance(eos, EndOfStream) and (eos.stream, eos.frames, eos.reason) == (published[0].stream, frames, reason)
    assert [m.seq for m in published] == list(range(frames))


def image_folder(tmp_path: Path) -> Path:
    """Four real highway stills and a grayscale one, named so that sort order matters.

    All 1280x720: the overlay video of a stream keeps one frame size (odd sizes are covered by
    the source and worker tests)."""
    folder = tmp_path / "stills"
    folder.mkdir()
    for i in (1, 2, 3, 4):
        (folder / f"{i:02d}_highway.jpg").write_bytes((DATA / f"highway_{i}.jpg").read_bytes())
    gray = cv2.cvtColor(cv2.imread(str(DATA / "highway_5.jpg")), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(folder / "05_gray.png"), gray)
    return folder


@pytest.mark.slow
def test_video_and_image_folder_two_workers_match_the_model_and_the_files(tmp_path):
    """With tracking off, what is published is exactly what the model gives, nothing more."""
    folder = image_folder(tmp_path)
    out = tmp_path / "out"
    config = config_for(f"sources.uris=[{PEDESTRIANS}, {folder}]", "sources.max_frames=6", "workers.count=2",
                        "batching.max_batch=3", f"output.dir={out}", "output.overlay=true", "tracking.enabled=false")
    with Consumer(config.publish.endpoint, streams=["pedestrians_720p", "stills"], timeout=RECEIVE_LIMIT_S) as consumer:
        with BackgroundRun(config) as background:
            received = receive(consumer)
        summary = background.result()

    assert_complete_in_order(received["pedestrians_720p"], 6)
    assert_complete_in_order(received["stills"], 5)
    assert summary.published == 11 and summary.errors == []
    assert [w["device"] for w in summary.workers] == ["cpu", "cpu"]

    # every frame's masks decode to its own size, and the results are the model's, frame by frame
    # (called directly with the workers' one thread: see OneThreadModel; alone, not in the workers'
    # batches, so to the last bits: see assert_same_instances)
    reference = OneThreadModelActor.remote(TINY)
    for stream, uri in (("pedestrians_720p", PEDESTRIANS), ("stills", folder)):
        source = open_source(parse_source(str(uri)))
        for message in received[stream][:-1]:
            frame = source.read()
            assert (message.height, message.width) == frame.rgb.shape[:2]
            assert message.masks.shape == (10, message.height, message.width)
            alone = ray.get(reference.predict.remote([frame.rgb]))[0]
            assert_same_instances(message.instances, instance_records(alone))
        source.close()
    ray.kill(reference)

    # the files hold exactly what was published
    for stream in ("pedestrians_720p", "stills"):
        lines = (out / f"{stream}.jsonl").read_bytes().splitlines()
        assert lines == consumer.frame_bytes(stream)  # byte for byte
        coco = COCO(str(out / f"{stream}.coco_images.json"))
        results = coco.loadRes(str(out / f"{stream}.coco_results.json"))
        assert len(results.anns) == 10 * len(lines)
        overlay = cv2.VideoCapture(str(out / f"{stream}.overlay.mp4"))
        assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == len(lines)
        assert all(b"track" not in line for line in lines)  # no track_id, tracks_ended nor its timing
        assert not (out / f"{stream}.mots.txt").exists()


def named_worker(index: int) -> str:
    """The name of the running pipeline's inference worker `index`."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("maskstream-") and a["name"].endswith(f"-worker-{index}")]
    assert len(names) == 1, names
    return names[0]


@pytest.mark.slow
@pytest.mark.parametrize("restart", [False, True], ids=["killed-for-good", "killed-and-restarted"])
def test_worker_killed_with_batches_in_flight_has_them_rerun_and_every_frame_published_once_in_order(restart):
    # Decoding outruns the model many times over, so offline both workers always hold two
    # batches: worker 0 dies with batches in flight, and the summary must show them re-run.
    config = config_for(f"sources.uris=[{PEDESTRIANS}]", "sources.max_frames=40", "workers.count=2",
                        "batching.max_batch=2")
    with Consumer(config.publish.endpoint, streams=["pedestrians_720p"], timeout=RECEIVE_LIMIT_S) as consumer:
        with BackgroundRun(config) as background:
            first = consumer.receive(timeout=RECEIVE_LIMIT_S)
            ray.kill(ray.get_actor(named_worker(0), namespace=ray.get_runtime_context().namespace),
                     no_restart=not restart)
            rest = receive(consumer)["pedestrians_720p"]
        summary = background.result()
    assert_complete_in_order([first, *rest], 40)
    assert [frame.frame_index for frame in [first, *rest[:-1]]] == list(range(40))
    assert summary.published == 40 and summary.streams["pedestrians_720p"].frames_in == 40
    assert summary.reruns >= 1  # a batch was in flight on the killed worker and ran again


def tracked_run(*overrides: str, kill_worker: bool = False) -> list:
    """The default model on 30 generated street frames, tracking on (the default): every message
    of the stream as (seq, [(track_id, class_id, score, box)], tracks_ended), then EOS's ended."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = load_pipeline_config(None, ["sources.uris=['street=synthetic:seed=21,frames=30']", "workers.cpus=1",
                                         "progress=false", "batching.max_batch=2", f"publish.endpoint={endpoint}",
                                         *overrides])
    with Consumer(endpoint, streams=["street"], timeout=RECEIVE_LIMIT_S) as consumer:
        with BackgroundRun(config) as background:
            messages = [consumer.receive(timeout=RECEIVE_LIMIT_S)]
            if kill_worker:
                ray.kill(ray.get_actor(named_worker(0), namespace=ray.get_runtime_context().namespace), no_restart=True)
            messages += receive(consumer)["street"]
        summary = background.result()
    assert_complete_in_order(messages, 30)
    assert summary.reruns >= 1 if kill_worker else summary.reruns == 0
    return [(m.seq, [(i.track_id, i.class_id, i.score, i.box) for i in m.instances], m.tracks_ended)
            for m in messages[:-1]] + [messages[-1].tracks_ended]


def assert_same_tracks(got: list, want: list):
    """Two tracked_run results: the same seqs, ids, classes and ended tracks exactly; scores and
    boxes to float32's last bits (the runs' batches differ, see assert_same_instances)."""
    assert got[-1] == want[-1] and len(got) == len(want)
    for (seq, instances, ended), (want_seq, want_instances, want_ended) in zip(got[:-1], want[:-1]):
        assert (seq, [i[:2] for i in instances], ended) == (want_seq, [i[:2] for i in want_instances], want_ended)
        if instances:
            np.testing.assert_allclose([i[2] for i in instances], [i[2] for i in want_instances], atol=1e-5)
            np.testing.assert_allclose([i[3] for i in instances], [i[3] for i in want_instances], atol=1e-2)


@pytest.mark.slow
def test_track_ids_are_the_same_with_one_worker_two_workers_and_a_worker_killed():
    """Tracking runs in the publisher on the frames in seq order, once each: which worker found a
    frame's instances, and whether its batch ran twice, changes no id (the workers have one
    thread each, as the one-worker run's: oneDNN's sums differ in the last bit with it)."""
    one = tracked_run("workers.count=1")
    assert_same_tracks(tracked_run("workers.count=2"), one)
    assert_same_tracks(tracked_run("workers.count=2", kill_worker=True), one)
    ids = [i[0] for _, instances, _ in one[:-1] for i in instances]
    assert max(ids) >= 3 and max(ids.count(i) for i in set(ids) - {0}) >= 20   # real tracks, followed long
    assert sorted(one[-1] + sum((ended for _, _, ended in one[:-1]), ())) == sorted(set(ids) - {0})


@pytest.mark.slow
def test_live_source_faster_than_inference_drops_oldest_and_counts_them():
    # 100 generated frames a second, paced like a camera, into one worker taking one frame at a time
    config = config_for("sources.uris=['synthetic:seed=2,width=320,height=240,fps=100,frames=80']",
                        "sources.mode=live", "workers.count=1", "batching.max_batch=1")
    with Consumer(config.publish.endpoint, streams=["synthetic"], timeout=RECEIVE_LIMIT_S) as consumer:
        with BackgroundRun(config) as background:
            messages = receive(consumer)["synthetic"]
        summary = background.result()
    *frames, eos = messages
    assert_complete_in_order(messages, len(frames))
    indices = [f.frame_index for f in frames]
    assert all(b > a for a, b in zip(indices, indices[1:]))  # never an older frame after a newer one
    row = summary.streams["synthetic"]
    assert row.frames_in == 80 and row.published == len(frames) < 80
    assert sum(f.dropped_before for f in frames) == row.dropped == 80 - len(frames)
    assert all(b.frame_index - a.frame_index - 1 == b.dropped_before for a, b in zip(frames, frames[1:]))
    assert eos.frames == len(frames)


@pytest.mark.slow
def test_network_camera_read_live_and_resumed_after_its_server_restarts():
    camera = MjpegCamera(free_port(), fps=10).start()
    config = config_for(f"sources.uris=['door={camera.url}']", "workers.count=1", "batching.max_batch=1",
                        "sources.reconnect_initial_s=0.2", "sources.reconnect_max_s=0.5", "sources.open_timeout_s=2")
    try:
        with Consumer(config.publish.endpoint, streams=["door"], timeout=RECEIVE_LIMIT_S) as consumer:
            with BackgroundRun(config) as background:
                before = [consumer.receive(timeout=RECEIVE_LIMIT_S) for _ in range(3)]
                camera.stop()
                restarted_at = time.time()
                camera.start()
                after = consumer.receive(timeout=RECEIVE_LIMIT_S)
                while after.captured_at < restarted_at:
                    after = consumer.receive(timeout=RECEIVE_LIMIT_S)
                background.stop.set()
                rest = receive(consumer)["door"]
            summary = background.result()
    finally:
        camera.stop()
    frames = before + [after] + rest[:-1]
    assert isinstance(rest[-1], EndOfStream) and (rest[-1].frames, rest[-1].reason) == (frames[-1].seq + 1, "stopped")
    assert [f.seq for f in frames] == sorted(set(f.seq for f in frames))
    assert after.frame_index > before[-1].frame_index and (after.width, after.height) == (160, 120)
    assert summary.streams["door"].published == rest[-1].frames


@pytest.mark.slow
def test_bad_inputs_are_reported_and_the_good_stream_finishes(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.avi").write_text("not a video")
    unreachable = f"http://127.0.0.1:{free_port()}/cam.mjpg"
    config = config_for(f"sources.uris=[{PEDESTRIANS}, {tmp_path / 'missing.mp4'}, {tmp_path / 'notes.avi'}, "
                        f"{tmp_path / 'empty'}, '{unreachable}']",
                        "sources.mode=offline", "sources.max_frames=3", "sources.open_timeout_s=2")
    with Consumer(config.publish.endpoint, streams=["pedestrians_720p"], timeout=RECEIVE_LIMIT_S) as consumer:
        with BackgroundRun(config) as background:
            messages = receive(consumer)["pedestrians_720p"]
        summary = background.result()
    assert_complete_in_order(messages, 3)
    assert summary.errors == [f"{tmp_path / 'missing.mp4'}: no such file",
                              f"{tmp_path / 'notes.avi'}: cannot open (not a video, or damaged)",
                              f"{tmp_path / 'empty'}: no images in this folder (.bmp, .jpeg, .jpg, .pgm, "
                              ".png, .pnm, .ppm, .tif, .tiff, .webp)",
                              f"{unreachable}: cannot open (unreachable, or not a video stream)"]


@pytest.mark.slow
def test_nothing_to_run_is_one_error():
    with pytest.raises(PipelineError, match=r"^/no/clip.avi: no such file$"):
        run(config_for("sources.uris=[/no/clip.avi]"))
    with pytest.raises(PipelineError, match=r"^/no/weights.npz: no such weights file$"):
        run(config_for("model.weights=/no/weights.npz"))
    with pytest.raises(PipelineError, match=r"^9 workers of 1 CPU need 9 CPUs; the Ray cluster has 4 "):
        run(config_for("workers.count=9"))


class ProcessCounter:
    """The most ingest actor processes alive at once while it runs (sampled every few ms)."""

    def __init__(self):
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._done.wait(0.005):
            self.peak = max(self.peak, len(actor_pids("Ingest")))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._done.set()
        self._thread.join()


@pytest.mark.slow
def test_an_archive_is_read_max_open_streams_at_a_time_and_a_consumer_sees_every_stream():
    """sources.max_open 1 over four streams and a file that does not open: one ingest process at
    a time (counted in /proc while the run goes; all at once would be four), the bad file one
    line while the others go on, every stream complete and in order. The consumer names no
    stream and so ends when every stream it has seen has ended (maskstream consume's rule): it
    still gets all four, because a stream's EOS waits until the next one has a frame out."""
    ids = ["s0", "s1", "s2", "s3"]
    sources = [f"{sid}=synthetic:seed={i},width=160,height=96,frames=8" for i, sid in enumerate(ids)]
    sources.insert(1, "/no/such/clip.mp4")
    config = config_for(f"sources.uris={json.dumps(sources)}", "sources.max_open=1", "publish.wait_subscribers=1")
    with Consumer(config.publish.endpoint, timeout=RECEIVE_LIMIT_S) as consumer, ProcessCounter() as processes:
        with BackgroundRun(config) as background:
            by_stream = receive(consumer)
        summary = background.result()
    assert processes.peak == 1
    assert sorted(by_stream) == ids
    for sid in ids:
        assert_complete_in_order(by_stream[sid], 8)
    assert summary.errors == ["/no/such/clip.mp4: no such file"]
    assert [(s.stream, s.frames_in, s.published) for s in summary.streams.values()] == [(sid, 8, 8) for sid in ids]


@pytest.mark.slow
def test_a_stopped_archive_run_ends_the_streams_read_and_names_those_never_started():
    config = config_for("sources.uris=['a=synthetic:width=160,height=96,frames=100000', "
                        "'b=synthetic:width=160,height=96,frames=5', 'c=synthetic:width=160,height=96,frames=5']",
                        "sources.max_open=1")
    with Consumer(config.publish.endpoint, streams=["a"], timeout=RECEIVE_LIMIT_S) as consumer:
        with BackgroundRun(config) as background:
            first = next(iter(consumer))
            background.stop.set()
            messages = [first, *receive(consumer)["a"]]
        summary = background.result()
    assert messages[-1].reason == "stopped" and [m.seq for m in messages[:-1]] == list(range(len(messages) - 1))
    assert summary.not_started == ["b", "c"] and list(summary.streams) == ["a"] and not summary.errors
    assert "not started (the run was stopped first): 2 stream(s), b, c" in summary.table()


@pytest.mark.slow
def test_an_interrupted_archive_run_resumed_with_skip_done_runs_only_what_it_had_not_finished(tmp_path):
    """Run 1 is stopped after stream a's end, while b is read: a is done, b is not. Run 2, with
    output.skip_done and b now a finite source, passes over a (its files untouched) and runs b
    to its end; run 3 finds both done and starts nothing."""
    short, endless = "synthetic:width=160,height=96,frames=5", "synthetic:width=160,height=96,frames=100000"
    first = config_for(f"sources.uris=['a={short}', 'b={endless}']", f"output.dir={tmp_path}")
    with Consumer(first.publish.endpoint, streams=["a"], timeout=RECEIVE_LIMIT_S) as consumer:
        with BackgroundRun(first) as background:
            assert_complete_in_order(receive(consumer)["a"], 5)
            background.stop.set()
        assert sorted(background.result().streams) == ["a", "b"]
    a_files = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.glob("a.*")}
    assert json.loads((tmp_path / "b.eos.json").read_text())["reason"] == "stopped"
    again = [f"sources.uris=['a={short}', 'b={short}']", f"output.dir={tmp_path}", "output.skip_done=true"]
    second = run(config_for(*again))
    assert (list(second.streams), second.skipped, second.streams["b"].published) == (["b"], ["a"], 5)
    assert "passed over, done in an earlier run: 1 stream(s), a" in second.table()
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.glob("a.*")} == a_files
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 5
    third = run(config_for(*again))
    assert (third.streams, third.skipped) == ({}, ["a", "b"])


RUN_PIPELINE = (sys.executable, "run_pipeline.py")        # the thin wrapper
MASKSTREAM_RUN = (sys.executable, "-m", "pipeline.cli", "run")  # what the `maskstream run` script calls


def cli(*args: str, command=RUN_PIPELINE) -> list[str]:
    return [*command, "--ray-address", ray.get_runtime_context().gcs_address,
            "--set", f"model.config={TINY}", "--set", "model.weights=null", "--set", "model.score_threshold=null",
            "--set", "workers.cpus=1", "--set", "workers.precision=model", *args]


@pytest.mark.slow
def test_cli_runs_a_clip_to_files_quietly(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    done = subprocess.run(cli("--source", f"ped={PEDESTRIANS}", "--set", "sources.max_frames=3", "--publish", endpoint,
                              "--out", str(tmp_path), "--max-batch", "2"),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "ped.jsonl").read_text().splitlines()) == 3
    # stderr is the summary and nothing else (no Ray or TensorFlow chatter): its table, row by row
    rows = {line.split()[0]: line.split()[1:] for line in done.stderr.splitlines()}
    assert rows.pop("stream") == ["in", "published", "dropped", "fps", "end-to-end", "ms", "p50/p95/p99"]
    assert rows.pop("ped")[:3] == ["3", "3", "0"] and rows.pop("all")[:3] == ["3", "3", "0"]
    assert rows.pop("stage") == ["latency", "ms", "p50", "p95", "p99", "frames"]
    assert rows.pop("worker")[1:] == ["cpu,", "threads", "1,", "float32,", "winograd", "4x4"]  # what the worker got
    assert {stage: row[-1] for stage, row in rows.items()} == {stage: "3" for stage in STAGES}
    assert done.stdout == ""


@pytest.mark.slow
def test_cli_source_pattern_and_classes_run_a_stream_per_file_of_those_classes_only(tmp_path):
    """A pattern is a stream per matching file, named after it; --classes reaches the workers'
    model: every published instance is of those classes (the tiny model's random weights find
    lane markings first on these clips) and the cap is filled with them. One run for both: each
    run starts Ray and TensorFlow."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    tiny = ["--set", f"model.config={TINY}", "--set", "model.weights=null", "--set", "model.score_threshold=null"]
    done = subprocess.run(cli("--source", f"{DATA}/*_720p*", "--set", "sources.max_frames=2", "--publish", endpoint,
                              "--out", str(tmp_path), "--classes", "person", *tiny),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in tmp_path.glob("*.jsonl")) == ["highway_720p_38f.jsonl", "pedestrians_720p.jsonl"]
    for path in tmp_path.glob("*.jsonl"):
        frames = [json.loads(line) for line in path.read_text().splitlines()]
        assert [frame["stream"] for frame in frames] == [path.stem] * 2
        assert all(len(frame["instances"]) == 10 for frame in frames)     # the tiny model's cap, all of them kept
        assert {i["label"] for frame in frames for i in frame["instances"]} == {"person"}
    done = subprocess.run(cli("--source", str(PEDESTRIANS), "--classes", "persn", *tiny), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: model.classes: 'persn' is not a class of {TINY} (did you mean 'person'?)\n"


@pytest.mark.slow
def test_cli_missing_input_is_one_line():
    """Said before Ray starts (in seconds, not after the actors come up): the Ray address given is
    nobody's, which a run that got that far would report instead."""
    for command in (RUN_PIPELINE, MASKSTREAM_RUN):
        done = subprocess.run([*command, "--ray-address", f"127.0.0.1:{free_port()}", "--source", "/no/such/clip.avi"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)  # a Ray join waits minutes
        assert (done.returncode, done.stderr, done.stdout) == (2, "error: /no/such/clip.avi: no such file\n", "")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_finishes_the_frames_in_flight_and_sends_eos(signum):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Consumer(endpoint, streams=["synthetic"], timeout=RECEIVE_LIMIT_S) as consumer:
        process = subprocess.Popen(cli("--source", "synthetic:width=160,height=120,frames=100000", "--publish", endpoint,
                                       command=MASKSTREAM_RUN),
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = consumer.receive(timeout=RECEIVE_LIMIT_S)
        process.send_signal(signum)
        rest = receive(consumer)["synthetic"]
        stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert_complete_in_order([first, *rest], rest[-1].frames, "stopped")
    assert stderr.startswith("stopping: finishing the frames in flight")
    summary_row = next(line.split() for line in stderr.splitlines() if line.startswith("synthetic"))
    assert int(summary_row[2]) == rest[-1].frames  # published, as the summary says


MULTI_NODE = textwrap.dedent("""
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.config import load_pipeline_config
    from pipeline.runner import run

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=2)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    summary = run(load_pipeline_config(None, sys.argv[1:]))
    head = ray.get_runtime_context().get_node_id()
    print(json.dumps({"head": head, "gpu_node": gpu_node.node_id, "workers": summary.workers,
                      "published": summary.published}))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow
def test_multi_node_workers_go_one_per_gpu_on_the_gpu_node():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-c", MULTI_NODE, f"model.config={TINY}", "model.weights=null",
                           "model.score_threshold=null", "workers.cpus=1",
                           "sources.uris=['synthetic:width=160,height=120,frames=6']", f"publish.endpoint={endpoint}",
                           "progress=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["published"] == 6
    assert len(report["workers"]) == 2  # workers.count 0: one per GPU of the cluster
    assert {w["node_id"] for w in report["workers"]} == {report["gpu_node"]} != {report["head"]}
    assert sorted(w["gpu_ids"] for w in report["workers"]) == [["0"], ["1"]]
    # the node declares GPUs this machine does not have: the workers say so and run on the CPU
    assert all(w["device"] == "cpu" and "TensorFlow finds no GPU" in w["note"] for w in report["workers"])
