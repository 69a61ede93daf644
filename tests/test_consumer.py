"""The consumer SDK and the consume CLI against a live publisher."""
import dataclasses
import json
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from pipeline.consumer import ConsumerError
from pipeline.protocol import EndOfStream
from tests.wire_helpers import (
    HEIGHT,
    LABELS,
    WIDTH,
    Consumer,
    make_record,
    rectangle_mask,
    start_publisher,
    stop_publisher,
    warm_up,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")

REPO = Path(__file__).resolve().parent.parent
CLI_START_LIMIT = 60.0  # seconds; a guard against a CLI that never prints, not a timing
DOCUMENTED_ENDPOINT = "tcp://127.0.0.1:5555"


def test_stream_filter_and_eos_per_stream():
    publisher, endpoint = start_publisher()
    with Consumer(endpoint, timeout=30) as everything, \
            Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as only_cam1:
        warm_frames = warm_up(publisher, [everything, only_cam1])
        for seq in range(3):
            publisher.publish.remote(make_record("cam10", seq))
            publisher.publish.remote(make_record("cam1", seq))
        publisher.end_stream.remote("cam1", 3)
        publisher.end_stream.remote("cam10", 3)
        publisher.end_stream.remote("warmup", warm_frames)
        all_messages = [m for m in everything.messages() if m.stream != "warmup"]
        cam1_messages = [m for m in only_cam1.messages() if m.stream != "warmup"]
        assert everything.finished and only_cam1.finished
    stop_publisher(publisher)
    assert [(m.stream, getattr(m, "seq", None)) for m in cam1_messages] == [
        ("cam1", 0), ("cam1", 1), ("cam1", 2), ("cam1", None)]
    assert cam1_messages[-1] == EndOfStream("cam1", 3)
    for stream in ("cam1", "cam10"):
        assert [m.seq for m in all_messages if m.stream == stream and not isinstance(m, EndOfStream)] == [0, 1, 2]
    assert {m.stream: m.frames for m in all_messages if isinstance(m, EndOfStream)} == {
        "cam1": 3, "cam10": 3}


def test_iteration_ends_on_timeout_without_a_publisher():
    with Consumer("tcp://127.0.0.1:9", streams=["cam1"], timeout=0.2) as consumer:
        assert list(consumer) == []
        assert not consumer.finished


def test_bad_endpoint_is_one_line_naming_it():
    with pytest.raises(ConsumerError, match=r"^consumer endpoint tcp://nowhere: "):
        Consumer("tcp://nowhere")


def wait_for_line(process: subprocess.Popen) -> str | None:
    """A line the CLI printed, or None if none is ready within 50 ms."""
    ready, _, _ = select.select([process.stdout], [], [], 0.05)
    return process.stdout.readline() if ready else None


def rest_of_output(process: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) to the process's end. Not communicate(): it reads the pipe itself and
    would miss lines that readline() has already buffered."""
    output, errors = process.stdout.read(), process.stderr.read()
    process.wait(timeout=60)
    return output, errors


def publish_until_it_prints(publisher, process: subprocess.Popen, then: int) -> tuple[str, int]:
    """Publishes cam1 frames until the subscribing ``process`` prints (its slow join), then
    ``then`` more and cam1's end; returns (its first line, the frames published in all)."""
    seq, started = 0, time.monotonic()
    while (first_line := wait_for_line(process)) is None:
        if time.monotonic() - started > CLI_START_LIMIT:   # killed first: a running process's stderr read blocks
            process.kill()
            raise AssertionError(f"the consumer printed nothing in {CLI_START_LIMIT} s: {process.stderr.read()}")
        publisher.publish.remote(make_record("cam1", seq))
        seq += 1
    for more in range(seq, seq + then):
        publisher.publish.remote(make_record("cam1", more))
    publisher.end_stream.remote("cam1", seq + then)
    return first_line, seq + then


def test_consume_cli_records_and_renders_what_was_sent(tmp_path):
    publisher, endpoint = start_publisher()
    jsonl, video = tmp_path / "cam1.jsonl", tmp_path / "cam1.avi"
    command = [sys.executable, "-m", "pipeline.cli", "consume", endpoint, "--stream", "cam1",
               "--jsonl", str(jsonl), "--video", str(video), "--timeout", "30"]
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as reference:
        publisher.end_stream.remote("warmup", warm_up(publisher, [reference]))
        cli = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        first_line, frames = publish_until_it_prints(publisher, cli, then=4)
        seqs = [frame.seq for frame in reference if frame.stream == "cam1"]
        sent = dict(zip(seqs, reference.frame_bytes("cam1")))
        output, errors = rest_of_output(cli)
    stop_publisher(publisher)

    assert cli.returncode == 0, errors
    recorded = jsonl.read_bytes().splitlines()
    first_seq = json.loads(recorded[0])["seq"]
    assert recorded == [sent[seq] for seq in range(first_seq, frames)]  # from where it joined, byte for byte
    lines = [first_line.rstrip("\n"), *output.splitlines()]
    if first_seq > 0:  # it joined late, and says which frames it never got
        assert lines.pop(0) == f"cam1: {first_seq} frame(s) never received, seq 0-{first_seq - 1} (before joining)"
    assert lines[0].startswith(f"cam1 seq={first_seq} frame={first_seq} ")
    assert output.splitlines()[-1] == f"cam1 ended after {frames} frames (end)"
    capture = cv2.VideoCapture(str(video))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == len(recorded)
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (WIDTH, HEIGHT)
    capture.release()


def test_consume_cli_stopped_by_sigterm_leaves_whole_files(tmp_path):
    """SIGTERM (docker stop, systemd) mid-stream: the command ends as on Ctrl-C (status 130) and
    closes its files, so the overlay video plays with as many frames as the JSON lines (an mp4
    killed unclosed has no index and does not open)."""
    publisher, endpoint = start_publisher()
    jsonl, video = tmp_path / "cam1.jsonl", tmp_path / "cam1.mp4"
    command = [sys.executable, "-m", "pipeline.cli", "consume", endpoint, "--stream", "cam1",
               "--jsonl", str(jsonl), "--video", str(video)]
    cli = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()   # its stdout, line by line, read on a thread (never blocks the test)
    threading.Thread(target=lambda: [lines.put(line) for line in cli.stdout], daemon=True).start()
    try:
        seq, started = 0, time.monotonic()
        while lines.empty():   # its slow join: frames until it prints
            assert time.monotonic() - started < CLI_START_LIMIT, "the consumer printed nothing"
            publisher.publish.remote(make_record("cam1", seq))
            seq += 1
            time.sleep(0.05)
        for more in range(seq, seq + 3):   # three more, received; the stream goes on (no EOS)
            publisher.publish.remote(make_record("cam1", more))
        printed = []
        while sum(line.startswith("cam1 seq=") for line in printed) < 3:
            printed.append(lines.get(timeout=CLI_START_LIMIT))
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
        stop_publisher(publisher)
    assert cli.returncode == 130, cli.stderr.read()
    recorded = jsonl.read_bytes().splitlines()
    capture = cv2.VideoCapture(str(video))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert len(recorded) >= 3 and frames == len(recorded)


@pytest.mark.parametrize("arguments, message", [
    (["--video", "x.mp4"], "--video renders one stream"),
    (["--curve-keys", "/nonexistent/keys"], "curve keys /nonexistent/keys: no such directory"),
])
def test_consume_cli_bad_arguments_are_one_line(arguments, message):
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "consume", "tcp://127.0.0.1:9", *arguments],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]


def documented_consumer() -> str:
    """The first python block of docs/protocol.md: the consumer in plain pyzmq and pycocotools."""
    return (REPO / "docs" / "protocol.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_plain_consumer_reads_a_real_publisher(tmp_path):
    code = documented_consumer()
    assert "import pipeline" not in code and "from pipeline" not in code and DOCUMENTED_ENDPOINT in code
    publisher, endpoint = start_publisher()
    # run where nothing of the project can be imported (pyzmq and pycocotools only), unbuffered
    process = subprocess.Popen([sys.executable, "-u", "-c", code.replace(DOCUMENTED_ENDPOINT, endpoint)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_line, frames = publish_until_it_prints(publisher, process, then=3)
    output, errors = rest_of_output(process)
    stop_publisher(publisher)
    assert process.returncode == 0, errors  # it ended at the EOS
    lines = [first_line.rstrip("\n"), *output.splitlines()]
    first_seq = int(lines[0].split()[1])
    expected = [f"cam1 {frame} {instance.label} {round(float(instance.score), 2)} "
                f"{int(rectangle_mask(frame, index)[0].sum())}"
                for frame in range(first_seq, frames)
                for index, instance in enumerate(make_record("cam1", frame).instances)]
    assert lines == expected and {line.split()[2] for line in lines} == set(LABELS.values())


def test_consume_counts_the_tracks_started_and_ended_per_stream():
    from pipeline.consume import TrackCounts
    counts = TrackCounts()
    tracked = [dataclasses.replace(i, track_id=t) for i, t in zip(make_record("cam1", 0, instances=3).instances, (4, 0, 5))]
    counts.add(dataclasses.replace(make_record("cam1", 0), instances=tuple(tracked), tracks_ended=(2,)))
    counts.add(dataclasses.replace(make_record("cam1", 1), instances=tuple(tracked[:1]), tracks_ended=(5,)))
    counts.add(EndOfStream("cam1", 2, tracks_ended=(4,)))
    counts.add(make_record("cam2", 0))                  # a stream without tracking
    assert counts.summary("cam1") == "; tracks: 2 started, 3 ended"
    assert counts.summary("cam2") == ""
