"""Helpers for the pipeline core tests: shared clips, free ports, a real MJPEG-over-HTTP camera,
the model run directly as a worker would run it.

Run as a script, this module is that camera: `python pipeline_helpers.py PORT FPS` serves an
endless multipart JPEG stream on 127.0.0.1:PORT, as many IP cameras do.
"""
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import ray

from pipeline.config import load_pipeline_config
from pipeline.runner import run

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TINY = str(Path(__file__).resolve().parent.parent / "configs" / "test_tiny.yaml")
PEDESTRIANS = DATA / "pedestrians_720p.avi"
HIGHWAY = DATA / "highway_720p_38f.mp4"
SERVER_START_LIMIT = 30.0  # seconds; a guard against a server that never listens, not a timing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_for(*overrides: str):
    """A test config: the tiny model, CPU workers of one thread in the model's own precision (float32,
    as the references are computed), a free port, no progress bars."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    return load_pipeline_config(None, [f"model.config={TINY}", "model.weights=null", "model.score_threshold=null",
                                       "workers.cpus=1", "workers.precision=model", "progress=false",
                                       f"publish.endpoint={endpoint}", *overrides])


class BackgroundRun:
    """`run(config)` in a thread, so that the test can subscribe, watch and interfere meanwhile."""

    def __init__(self, config, model_factory=None):
        self.config = config
        self.model_factory = model_factory
        self.stop = threading.Event()
        self.summary = self.error = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.summary = run(self.config, self.model_factory, stop=self.stop)
        except Exception as error:  # re-raised in the test by result()
            self.error = error

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self._thread.join()

    def result(self):
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.summary


class OneThreadModel:
    """`models.load_model(config).predict(frames, masks="rle")` called directly, in a process of
    its own with one TensorFlow thread, as a pipeline worker with `workers.cpus: 1` runs the model.

    The reference the workers' results are compared with: oneDNN's sums differ in the last bit
    with the thread count, so only like compared with like is exact (the test process has two).
    """

    def __init__(self, config, weights: str | None = None):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import models

        self.model = models.load_model(config, weights)

    def predict(self, frames: list[np.ndarray]) -> list:
        return self.model.predict(frames, masks="rle")


OneThreadModelActor = ray.remote(num_cpus=1)(OneThreadModel)


def assert_same_instances(got, want):
    """Published instances `got` against the model's `want` (InstanceRecords) computed in another
    batch: the same detections in the same order, to float32's last bits. oneDNN's sums depend on
    the batch's size on some CPUs (seen on AVX-512), so a frame batched with others and the same
    frame alone agree only that far; a wrong frame, class, order or mask is still far outside."""
    from pycocotools import mask as mask_utils

    assert len(got) == len(want) > 0
    assert [(g.class_id, g.label) for g in got] == [(w.class_id, w.label) for w in want]
    np.testing.assert_allclose([g.score for g in got], [w.score for w in want], atol=1e-5)
    np.testing.assert_allclose([g.box for g in got], [w.box for w in want], atol=1e-2)
    ious = mask_utils.iou([g.rle for g in got], [w.rle for w in want], [0] * len(want)).diagonal()
    assert ious.min() > 0.99, ious


POLL_LIMIT = 600  # polls of 50 ms: a guard against something that never happens, not a timing


def poll(condition, what: str):
    """condition()'s first truthy value, asked every 50 ms; AssertionError naming `what` if it never comes."""
    for _ in range(POLL_LIMIT):
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


class MjpegCamera:
    """A real HTTP server process streaming MJPEG frames (160x120) at `fps`; stop() kills it."""

    def __init__(self, port: int, fps: float = 25.0):
        self.port, self.fps = port, fps
        self.url = f"http://127.0.0.1:{port}/stream.mjpg"
        self.process = None

    def start(self) -> "MjpegCamera":
        # The repository on the path: this file imports the project, installed or not.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen([sys.executable, __file__, str(self.port), str(self.fps)], env=env)
        deadline = time.monotonic() + SERVER_START_LIMIT
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"MJPEG camera on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class _MjpegHandler(BaseHTTPRequestHandler):
    fps = 25.0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        index = 0
        try:
            while True:
                image = np.full((120, 160, 3), index % 256, np.uint8)
                cv2.putText(image, str(index), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 0, 255), 2)
                jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
                self.wfile.write(jpeg + b"\r\n")
                index += 1
                time.sleep(1.0 / self.fps)
        except (BrokenPipeError, ConnectionResetError):
            pass


if __name__ == "__main__":
    _MjpegHandler.fps = float(sys.argv[2])
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), _MjpegHandler).serve_forever()


class BrightPixelsModel:
    """A model with the workers' interface (`predict(frames, masks="rle")`) that segments, in
    each frame, the pixels brighter than the frame's mean as one "person": real masks, real RLE,
    thousands of frames a second. For the delivery tests, whose subject is frames travelling
    (hundreds of them, and a subscriber ten times slower), not what the model finds."""

    def predict(self, frames, masks="rle"):
        import models
        from pycocotools import mask as mask_utils

        detections = []
        for frame in frames:
            gray = np.asarray(frame).mean(axis=2)
            mask = gray > gray.mean()
            ys, xs = np.nonzero(mask)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 1, 1]
            detections.append(models.Detections(
                boxes=np.array([box], np.float32), scores=np.array([0.9], np.float32),
                class_ids=np.array([2], np.int32), labels=["person"],
                rles=[mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))]))
        return detections


def bright_pixels_model(config, weights):
    """A ModelFactory (workers.inference) for BrightPixelsModel."""
    return BrightPixelsModel()


class BrightBlobsModel:
    """Like BrightPixelsModel, but each blob of bright pixels (8-connected, at least 12 pixels,
    the 20 largest) is its own "car": many objects coming and going, for the tracking tests."""

    def predict(self, frames, masks="rle"):
        import cv2
        import models
        from pycocotools import mask as mask_utils

        detections = []
        for frame in frames:
            gray = np.asarray(frame).mean(axis=2)
            bright = (gray > gray.mean() + gray.std()).astype(np.uint8)
            count, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
            blobs = sorted((i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= 12),
                           key=lambda i: (-stats[i, cv2.CC_STAT_AREA], i))[:20]
            boxes = [[stats[i, 0], stats[i, 1], stats[i, 0] + stats[i, 2], stats[i, 1] + stats[i, 3]] for i in blobs]
            detections.append(models.Detections(
                boxes=np.array(boxes, np.float32).reshape(-1, 4), scores=np.full(len(blobs), 0.9, np.float32),
                class_ids=np.full(len(blobs), 3, np.int32), labels=["car"] * len(blobs),
                rles=[mask_utils.encode(np.asfortranarray((labels == i).astype(np.uint8))) for i in blobs]))
        return detections


def bright_blobs_model(config, weights):
    """A ModelFactory (workers.inference) for BrightBlobsModel."""
    return BrightBlobsModel()


def actor_pid(class_name: str) -> int:
    """The process id of the one Ray actor of `class_name` running under this process's Ray node
    (other Ray instances may share the machine). For tests that kill it with SIGKILL."""
    found = actor_pids(class_name)
    assert len(found) == 1, f"{len(found)} processes of ray::{class_name}: {found}"
    return found[0]


def actor_pids(class_name: str) -> list[int]:
    """The process ids of the Ray actors of `class_name` running under this process's Ray node.
    Ray titles an actor's process `ray::<Class>` or `ray::<Class>.<method>`; its parent is the
    node's raylet. A process that has exited (a zombie: no command line) is not counted."""
    from ray._private import ray_constants

    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == raylet and (title == f"ray::{class_name}" or title.startswith(f"ray::{class_name}.")):
                found.append(int(entry.name))
    return found
