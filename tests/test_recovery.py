"""The whole pipeline delivering every frame (issue 15): a late subscriber ten times slower than the
pipeline, ingest and publisher processes killed with SIGKILL (not ray.kill), a live stream whose
reader dies, a file damaged in the middle, a Ray cluster that loses a worker node.

Real actors, sockets and processes; the model is tests.pipeline_helpers.BrightPixelsModel (real
masks, thousands of frames a second) where hundreds of frames must travel, so that these tests
are about delivery and stay short.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray
from pycocotools.coco import COCO

from pipeline.consumer import Consumer
from pipeline.protocol import EndOfStream, FrameRecord
from pipeline.scheduler import PUBLISH_BACKLOG
from pipeline.sources import open_source, parse_source
from tests.pipeline_helpers import (
    HIGHWAY,
    PEDESTRIANS,
    TINY,
    BackgroundRun,
    actor_pid,
    bright_blobs_model,
    bright_pixels_model,
    config_for,
    free_port,
)

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
RECEIVE_LIMIT_S = 180  # a consumer idle this long gives up: a guard against a hung run, not a timing
FRAMES = 600
SLOW_S = 0.05          # the slow subscriber's time per frame: ten times the pipeline's here (100-200 frames/s)
START_FIRST_S = 2.0    # the pipeline starts this long before its subscriber (an order, not a timing)


def delivery_config(*overrides: str, frames: int = FRAMES):
    """Offline, generated scenes, the publisher waiting for one subscriber, small queues."""
    return config_for(f"sources.uris=['synthetic:width=160,height=120,frames={frames}']",
                      "publish.wait_subscribers=1", "publish.hwm=20", "publish.sndbuf=65536",
                      "batching.max_batch=4", "workers.count=1", *overrides)


def subscriber(config) -> Consumer:
    return Consumer(config.publish.endpoint, streams=["synthetic"], timeout=RECEIVE_LIMIT_S, hwm=20)


def read(consumer: Consumer, seconds_per_frame: float, on_frame=lambda count: None) -> list:
    """Every message until EOS, taking ``seconds_per_frame`` over each frame; ``on_frame(n)``
    after the n-th frame."""
    messages, frames = [], 0
    for message in consumer.messages():
        messages.append(message)
        if isinstance(message, FrameRecord):
            frames += 1
            on_frame(frames)
            time.sleep(seconds_per_frame)
    return messages


def assert_every_frame_once_in_order(consumer: Consumer, messages: list, frames: int) -> None:
    received = [m for m in messages if isinstance(m, FrameRecord)]
    assert [f.seq for f in received] == list(range(frames)) == [f.frame_index for f in received]
    assert replace(messages[-1], tracks_ended=None) == EndOfStream("synthetic", frames, "end")  # ids: tracking's tests
    assert consumer.gaps == [] and consumer.malformed == 0


def test_a_late_subscriber_ten_times_slower_gets_every_frame_once_and_the_readers_wait():
    config = delivery_config()
    with BackgroundRun(config, bright_pixels_model) as background:
        time.sleep(START_FIRST_S)
        with subscriber(config) as consumer:
            messages = read(consumer, SLOW_S)
        summary = background.result()
    assert_every_frame_once_in_order(consumer, messages, FRAMES)
    # The subscriber held the pipeline back (the publisher waited for it) and the frames accepted
    # but not yet sent stayed bounded far below the stream: the readers waited.
    max_in_flight = 3 * config.batching.max_batch  # the default: 3 batches per worker, one worker
    bound = 2 * max_in_flight + (PUBLISH_BACKLOG + 1) * config.batching.max_batch
    assert summary.delivery["blocked_s"] > 0
    assert 0 < summary.peak_unsent <= bound < FRAMES
    assert summary.streams["synthetic"].frames_in == FRAMES and summary.restarts["ingest"] == 0


def test_ingest_then_publisher_killed_mid_run_every_frame_once_and_the_files_whole(tmp_path):
    """As above, the subscriber there first and nobody waited for at the start
    (wait_subscribers 0): the restarted publisher waits for the subscriptions it had to come
    back before it sends again."""
    out = tmp_path / "out"
    config = delivery_config(f"output.dir={out}", "publish.wait_subscribers=0")
    kills = {150: "Ingest", 350: "Publisher"}

    def kill(frames: int) -> None:
        if frames in kills:
            os.kill(actor_pid(kills[frames]), signal.SIGKILL)

    with subscriber(config) as consumer:
        with BackgroundRun(config, bright_pixels_model) as background:
            messages = read(consumer, 0.01, kill)
        summary = background.result()
    assert_every_frame_once_in_order(consumer, messages, FRAMES)
    assert summary.restarts == {"ingest": 1, "publisher": 1, "worker": 0}
    assert summary.published == FRAMES and summary.errors == []
    # the files were cut back and rebuilt at the publisher's restart: each frame once, in order
    lines = (out / "synthetic.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(FRAMES))
    coco = COCO(str(out / "synthetic.coco_images.json"))
    results = coco.loadRes(str(out / "synthetic.coco_results.json"))
    assert sorted(coco.getImgIds()) == list(range(FRAMES)) and len(results.anns) == FRAMES


ZONES = [{"name": "left", "polygon": [[0, 0], [80, 0], [80, 120], [0, 120]]},
         {"name": "middle", "line": [[80, 0], [80, 120]]}]


def track_ids_of_a_run(kill_publisher_at: int | None = None) -> list:
    """FRAMES generated frames, each blob of bright pixels a car (BrightBlobsModel: ~5 a frame,
    dozens of tracks), tracking on, a region and a counting line: per frame (seq, [(track_id, box,
    zones, dwell_s)], tracks_ended, zone_counts, crossings, line_counts), then EOS's tracks_ended; the
    publisher's process killed (SIGKILL) after that many frames were received."""
    config = delivery_config("publish.wait_subscribers=0", f"zones={json.dumps(ZONES)}")

    def kill(frames: int) -> None:
        if frames == kill_publisher_at:
            os.kill(actor_pid("Publisher"), signal.SIGKILL)

    with subscriber(config) as consumer:
        with BackgroundRun(config, bright_blobs_model) as background:
            messages = read(consumer, 0.01, kill)
        summary = background.result()
    assert_every_frame_once_in_order(consumer, messages, FRAMES)
    assert summary.restarts["publisher"] == (1 if kill_publisher_at else 0)
    assert summary.streams["synthetic"].line_counts == messages[-2].line_counts     # the run's totals
    return [(m.seq, [(i.track_id, i.box, i.zones, i.dwell_s) for i in m.instances], m.tracks_ended, m.zone_counts,
             m.crossings, m.line_counts) for m in messages[:-1]] + [messages[-1].tracks_ended]


def test_a_restarted_publisher_gives_the_frames_it_sends_again_the_same_track_ids():
    """The tracker runs in the publisher; its state goes to the scheduler with each answer and
    back to the restarted publisher, which sends again from a seq whose state it got: every
    frame gets the ids an uninterrupted run gives (a fresh tracker would count from 1 again). The
    kill comes late enough that the frames sent again start past seq 0 (the resend window is
    publish.hwm + 256 frames). The counting line's totals and the region's dwell times go on
    likewise (a fresh stage would count from 0 again)."""
    whole = track_ids_of_a_run()
    ids = {i for _, instances, *_ in whole[:-1] for i, *_ in instances} - {0}
    assert max(seconds for _, instances, *_ in whole[:-1] for *_, dwell in instances for seconds in dwell.values()) > 1
    assert len(ids) >= 20
    crossed = whole[-2][-1]["middle"]
    assert sum(crossed["in"].values()) + sum(crossed["out"].values()) >= 5
    assert sum(len(frame[4]) for frame in whole[:-1]) == sum(crossed["in"].values()) + sum(crossed["out"].values())
    assert track_ids_of_a_run(kill_publisher_at=450) == whole


def test_live_ingest_killed_frames_flow_again_and_the_gap_is_counted():
    config = config_for("sources.uris=['synthetic:width=160,height=120,fps=25,frames=100000']",
                        "sources.mode=live", "workers.count=1", "batching.max_batch=1")
    with BackgroundRun(config, bright_pixels_model) as background:
        with subscriber(config) as consumer:
            before = [consumer.receive(timeout=RECEIVE_LIMIT_S) for _ in range(10)]
            os.kill(actor_pid("Ingest"), signal.SIGKILL)
            killed_at = time.time()
            after = consumer.receive(timeout=RECEIVE_LIMIT_S)
            while after.captured_at < killed_at:  # frames in flight at the kill come first
                after = consumer.receive(timeout=RECEIVE_LIMIT_S)
            background.stop.set()
            rest = list(consumer.messages())
        summary = background.result()
    frames = [*before, after, *rest[:-1]]
    assert all(isinstance(f, FrameRecord) for f in frames) and consumer.gaps == []
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})  # never out of order or twice
    assert after.dropped_before > 0 and after.frame_index > before[-1].frame_index + after.dropped_before - 1
    assert replace(rest[-1], tracks_ended=None) == EndOfStream("synthetic", rest[-1].frames, "stopped")
    row = summary.streams["synthetic"]
    assert summary.restarts["ingest"] == 1 and row.dropped >= after.dropped_before
    assert row.published == rest[-1].frames


def test_a_file_damaged_in_the_middle_publishes_every_frame_that_decodes_and_says_which_did_not(tmp_path, caplog):
    damaged = tmp_path / "damaged.mp4"
    data = bytearray(HIGHWAY.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 40_000] = b"\xff" * 40_000
    damaged.write_bytes(data)
    source, decodable, index = open_source(parse_source(str(damaged))), [], 0
    while (frame := source.read()) is not None:
        index += frame.skipped
        decodable.append(index)
        index += 1
    source.close()
    assert 0 < len(decodable) < index  # frames are missing in the middle, and the end is there

    caplog.set_level(logging.WARNING, logger="pipeline.scheduler")
    config = config_for(f"sources.uris=[{damaged}]", "workers.count=1", "batching.max_batch=4")
    with BackgroundRun(config, bright_pixels_model) as background:
        with Consumer(config.publish.endpoint, streams=["damaged"], timeout=RECEIVE_LIMIT_S) as consumer:
            messages = list(consumer.messages())
        summary = background.result()
    frames = messages[:-1]
    assert [f.frame_index for f in frames] == decodable and [f.seq for f in frames] == list(range(len(decodable)))
    assert replace(messages[-1], tracks_ended=None) == EndOfStream("damaged", len(decodable), "end") and summary.errors == []
    missing = sorted(set(range(index)) - set(decodable))
    assert summary.streams["damaged"].skipped == len(missing)
    said = [r.getMessage() for r in caplog.records if "passed over" in r.getMessage()]
    assert said == [f"damaged: frames {missing[0]}-{missing[-1]} not decodable (damaged data), passed over"]
    assert f"damaged: {len(missing)} frame(s) could not be decoded, passed over" in summary.table()


NODE_LOST = textwrap.dedent("""
    import json, sys, threading, time
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.config import load_pipeline_config
    from pipeline.consumer import Consumer
    from pipeline.runner import run
    from tests.pipeline_helpers import bright_pixels_model

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=1)  # one worker of one CPU each: one here, one there
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    config = load_pipeline_config(None, sys.argv[1:])
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=run(config, bright_pixels_model)))
    seqs = []
    with Consumer(config.publish.endpoint, streams=["synthetic"], timeout=300) as consumer:
        thread.start()
        for frame in consumer:
            seqs.append(frame.seq)
            if len(seqs) == 40:
                cluster.remove_node(node)
            time.sleep(0.01)
    thread.join()
    summary = outcome["summary"]
    print(json.dumps({"seqs": seqs, "gaps": len(consumer.gaps), "published": summary.published,
                      "reruns": summary.reruns, "nodes": [w["node_id"] for w in summary.workers],
                      "removed": node.node_id, "errors": summary.errors}))
    ray.shutdown()
    cluster.shutdown()
""")


def test_a_lost_worker_node_has_its_batches_run_on_the_nodes_left():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-c", NODE_LOST, "model.config=configs/test_tiny.yaml", "model.weights=null",
                           "workers.count=2", "workers.cpus=1", "batching.max_batch=2", "progress=false",
                           "publish.wait_subscribers=1", "sources.uris=['synthetic:width=160,height=120,frames=200']",
                           f"publish.endpoint={endpoint}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["removed"] in report["nodes"] and len(set(report["nodes"])) == 2  # a worker was there
    assert report["seqs"] == list(range(200)) and report["gaps"] == 0 and report["published"] == 200
    assert report["reruns"] >= 1 and report["errors"] == []  # its batches ran again on the node left



def test_an_ingest_that_dies_for_good_ends_its_stream_saying_so_and_the_run_in_one_line():
    """The issue's report: a killed ingest looked like a clip of four frames, and the run ended in
    a traceback. With no restart allowed, its EOS says error and why, the consume CLI shows it,
    and `maskstream run` ends with its summary and that one line."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    consume = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "consume", endpoint, "--stream", "ped",
                                "--timeout", str(RECEIVE_LIMIT_S)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--ray-address", ray.get_runtime_context().gcs_address,
         "--set", f"model.config={TINY}", "--set", "model.weights=null", "--set", "workers.cpus=1",
         "--source", f"ped={PEDESTRIANS}", "--publish", endpoint, "--wait-subscribers", "1", "--max-batch", "2",
         "--set", "sources.max_restarts=0", "--set", "publish.hwm=4", "--set", "publish.sndbuf=16384"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = consume.stdout.readline()  # a frame went through: the ingest is mid-clip
    os.kill(actor_pid("Ingest"), signal.SIGKILL)
    consumed, consume_errors = consume.communicate(timeout=600)
    output, errors = pipeline.communicate(timeout=600)
    assert first.startswith("ped seq=0 ")
    last = consumed.splitlines()[-1]
    ended, _, tracks = last.partition("; ")    # then, with tracking, "tracks: S started, E ended"
    assert ended.startswith("ped ended after ") and ended.endswith(" frames (error: ped: its ingest actor died)")
    assert tracks.startswith("tracks: ")
    assert consume.returncode == 1, consume_errors  # the stream ended with an error
    assert pipeline.returncode == 1 and output == "" and "Traceback" not in errors
    assert errors.splitlines()[-1] == "error: ped: its ingest actor died"
