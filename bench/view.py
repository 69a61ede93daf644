"""A page that stops reading holds the pipeline back by nothing: frames/s with no page, a stalled page
and a reading page open on the live view, side by side in one run.

    python bench/view.py [--frames 120] [--repeats 3] [--model configs/default_model.yaml] [--weights W]

One Ray instance and one view process (``python -m pipeline.view``, as a user runs it) subscribed
to the pipeline's endpoint throughout; the pipeline runs offline (as fast as it can) on a generated
640x360 clip and sends each frame's picture (``publish.images: jpeg``, as ``maskstream run --view``
does), `repeats` times per condition, the conditions interleaved:

- none: the view subscribed, no page open;
- stalled: a page that opens the WebSocket and never reads a byte (``StalledViewer``);
- reading: a page that takes every frame as soon as it comes (``read_frames`` in its own process):
  the view draws and sends a JPEG for each frame it can.

frames/s is the run's published frames over its seconds (after warm-up). Also counted: frames the
view received of those published (its subscriber kept up), frames sent to the page (stalled: the
most the view sent it, sampled; reading: the frames it got) and how long the page stayed open
(the view closes a page that answers no ping for 45 s: a stalled page is let go). Prints a table
and writes bench/results/view.json. Times vary with the machine's load.
"""
import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import aiohttp  # noqa: E402

from pipeline.view import unpack_frame  # noqa: E402

RESULTS = REPO / "bench" / "results" / "view.json"
PORT = 5583
CONDITIONS = ("none", "stalled", "reading")
SAMPLE_S = 0.5
WAIT_LIMIT = 1000  # polls of the view's state; a guard against a page that never opens
SOURCE = "synthetic:seed=5,width=640,height=360,frames={frames}"


class StalledViewer:
    """A page that opens the view's WebSocket and then never reads a byte (a receive buffer of 4 KiB)."""

    def __init__(self, url: str):
        self.url = url
        self._socket = None

    def __enter__(self) -> "StalledViewer":
        host, port = url_address(self.url)
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._socket.connect((host, port))
        self._socket.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        return self

    def __exit__(self, *exc_info) -> None:
        self._socket.close()


def url_address(url: str) -> tuple[str, int]:
    """(host, port) of an http://HOST:PORT/ URL."""
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


async def read_frames(url: str, on_frame, stop: asyncio.Event) -> None:
    """A page that acknowledges every frame at once: ``on_frame(meta, jpeg)`` for each, until ``stop``."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http://", "ws://", 1) + "ws") as ws:
            stopping = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                receiving = asyncio.ensure_future(ws.receive())
                await asyncio.wait([receiving, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    break
                message = receiving.result()
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
                if message.type == aiohttp.WSMsgType.BINARY:
                    meta, jpeg = unpack_frame(message.data)
                    on_frame(meta, jpeg)
                    await ws.send_str(json.dumps({"ack": meta["stream"]}))
            stopping.cancel()


def view_state(url: str) -> dict:
    """The view's /state.json."""
    with urllib.request.urlopen(url + "state.json", timeout=10) as response:
        return json.loads(response.read())


def wait_for_viewers(url: str, count: int) -> None:
    """Until ``count`` pages are open on the view (a page's handshake is done on the server's time)."""
    for _ in range(WAIT_LIMIT):
        if len(view_state(url)["viewers"]) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url}: {count} pages never opened")


def reading_viewer_process(url: str) -> None:
    """``--read URL``: read frames until stdin closes, then print how many came."""
    count = 0

    def counted(meta, jpeg):
        nonlocal count
        count += 1

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
        await read_frames(url, counted, stop)

    asyncio.run(main())
    print(json.dumps({"frames": count}), flush=True)


class ReadingViewerProcess:
    """``reading_viewer_process`` in a process of its own: it takes no CPU time from the pipeline's driver."""

    def __init__(self, url: str):
        self.url = url
        self.frames = None

    def __enter__(self) -> "ReadingViewerProcess":
        self._process = subprocess.Popen([sys.executable, __file__, "--read", self.url],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc_info) -> None:
        out, _ = self._process.communicate("")
        self.frames = json.loads(out.strip().splitlines()[-1])["frames"]


def start_view(endpoint: str) -> tuple[subprocess.Popen, str]:
    """``python -m pipeline.view ENDPOINT --port 0`` and the URL it serves."""
    process = subprocess.Popen([sys.executable, "-m", "pipeline.view", endpoint, "--port", "0"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("view: http"):
        process.kill()
        raise SystemExit(f"the view did not start: {line!r}")
    return process, line.split()[1]


class ViewSampler:
    """Samples the view's /state.json every SAMPLE_S during a run: the most frames sent to a page,
    and how long a page stayed open (the view drops a page that answers no ping for 45 s)."""

    def __init__(self, url: str):
        self.url = url
        self.most_frames_sent = 0
        self.page_open_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        began = time.monotonic()
        while not self._stop.wait(SAMPLE_S):
            viewers = view_state(self.url)["viewers"]
            if viewers:
                self.most_frames_sent = max([self.most_frames_sent] + [v["frames_sent"] for v in viewers])
                self.page_open_s = time.monotonic() - began

    def __enter__(self) -> "ViewSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def one_run(config, condition: str, url: str) -> dict:
    """One pipeline run with the view's page in ``condition``; its frames/s and the view's counts."""
    from pipeline.runner import run

    with contextlib.ExitStack() as pages:
        if condition == "stalled":
            pages.enter_context(StalledViewer(url))
            wait_for_viewers(url, 1)
        reading = pages.enter_context(ReadingViewerProcess(url)) if condition == "reading" else None
        sampler = pages.enter_context(ViewSampler(url))
        summary = run(config)
    received = {s["stream"]: s["frames"] for s in view_state(url)["streams"]}
    stream = next(iter(summary.streams))
    return {"condition": condition, "fps": summary.published / summary.seconds, "published": summary.published,
            "seconds": summary.seconds, "view_received": received.get(stream, 0),
            "page_frames": reading.frames if reading else sampler.most_frames_sent if condition == "stalled" else None,
            "page_open_s": round(sampler.page_open_s, 1) if condition != "none" else None}

def main() -> None:
    if sys.argv[1:2] == ["--read"]:
        reading_viewer_process(sys.argv[2])
        return
    import ray

    from pipeline.config import load_pipeline_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120, help="frames per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per condition")
    parser.add_argument("--model", default=load_pipeline_config().model.config, help="model YAML")
    parser.add_argument("--weights", default=load_pipeline_config().model.weights)
    args = parser.parse_args()
    cores = os.cpu_count()
    endpoint = f"tcp://127.0.0.1:{PORT}"
    config = load_pipeline_config(None, [
        f"publish.endpoint={endpoint}", "progress=false", f"sources.uris=['{SOURCE.format(frames=args.frames)}']",
        f"model.config={args.model}", f"model.weights={json.dumps(args.weights)}", "workers.count=1",
        f"workers.cpus={cores}", "publish.images=jpeg"])
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    view, url = start_view(endpoint)
    runs = []
    try:
        for repeat in range(args.repeats):
            for condition in CONDITIONS:
                runs.append(one_run(config, condition, url))
                last = runs[-1]
                print(f"run {repeat + 1}/{args.repeats} {condition:<8} {last['fps']:6.2f} frames/s, view received "
                      f"{last['view_received']}/{last['published']}, page frames {last['page_frames']}, "
                      f"page open {last['page_open_s']} s", flush=True)
    finally:
        view.terminate()
        view.wait()
        ray.shutdown()
    table = summarise(runs)
    print(f"\n{'page':<10} {'frames/s median':>16} {'min':>7} {'max':>7} {'vs none':>8}  {'view received':<22} "
          f"{'frames to the page':<20} page open s")
    for condition, row in table.items():
        print(f"{condition:<10} {row['fps_median']:>16.2f} {row['fps_min']:>7.2f} {row['fps_max']:>7.2f} "
              f"{row['ratio_to_none']:>8.3f}  {row['view_received']:<22} {str(row['page_frames']):<20} "
              f"{row['page_open_s']}")
    report = {"machine": {"cores": cores, "platform": platform.platform(), "load_average": os.getloadavg()},
              "model": os.path.relpath(args.model, REPO),
              "weights": args.weights and os.path.relpath(args.weights, REPO),
              "source": SOURCE.format(frames=args.frames), "images": "jpeg", "repeats": args.repeats,
              "conditions": table, "runs": runs}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {os.getloadavg()[0]:.1f} on {cores} cores; wrote {RESULTS.relative_to(REPO)}")


def summarise(runs: list[dict]) -> dict:
    """Per condition: median, min and max frames/s, the median's ratio to no page, the view's counts."""
    table = {}
    for condition in CONDITIONS:
        fps = [r["fps"] for r in runs if r["condition"] == condition]
        table[condition] = {"fps_median": statistics.median(fps), "fps_min": min(fps), "fps_max": max(fps),
                            "view_received": " ".join(f"{r['view_received']}/{r['published']}" for r in runs
                                                      if r["condition"] == condition),
                            "page_frames": [r["page_frames"] for r in runs if r["condition"] == condition],
                            "page_open_s": [r["page_open_s"] for r in runs if r["condition"] == condition]}
    for row in table.values():
        row["ratio_to_none"] = row["fps_median"] / table["none"]["fps_median"]
    return table


if __name__ == "__main__":
    main()
