"""``maskstream run``: run the pipeline, sources -> Ray ingest -> batched Mask R-CNN workers -> ZeroMQ.

    maskstream run                                      # the embedded default (configs/default.yaml)
    maskstream run --source ../shared/data/pedestrians_720p.avi --out runs/ped
    maskstream run --config my.yaml --source cam=0 --source rtsp://host/stream --workers 2
    maskstream run --view                               # and watch it at http://127.0.0.1:8080/

Every config value can be overridden with --set section.key=value (see pipeline/config.py).
Prints the run's summary at the end; exits 0, 1 if an input failed (the others ran), 2 on a
mistake that stops the run (one line), 130 on a second Ctrl-C. The first Ctrl-C or SIGTERM stops
reading and finishes the frames already accepted (each stream ends with EOS, reason "stopped").
"""
import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager

from models.errors import command

from .keys import own_client_keys
from .view import DEFAULT_PORT as VIEW_PORT
from .view import ViewServer, connect_address


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="maskstream run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the pipeline: sources -> Ray ingest -> batched Mask R-CNN workers -> ZeroMQ "
                    "(and file sinks). Without options: the embedded default, configs/default.yaml.",
        epilog="examples:\n"
               "  maskstream run --source ../shared/data/pedestrians_720p.avi --out runs/ped\n"
               "  maskstream run --config my.yaml --source cam=0 --source rtsp://host/stream --workers 2")
    parser.add_argument("--config", help="pipeline YAML laid over configs/default.yaml")
    parser.add_argument("--source", action="append", metavar="[ID=]URI",
                        help="video file, image folder, camera index, rtsp:// or http(s):// URL, or synthetic:; "
                             "repeatable; a quoted pattern ('clips/*.mp4') is a stream per file it matches")
    parser.add_argument("--publish", metavar="ENDPOINT", help="ZeroMQ PUB endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--mode", choices=("live", "offline"),
                        help="default: live for cameras and streams, offline for files, folders and synthetic:")
    parser.add_argument("--workers", type=int, metavar="N", help="inference workers (default: one per GPU, else 1)")
    parser.add_argument("--max-batch", type=int, metavar="N", help="frames per inference batch")
    parser.add_argument("--max-wait-ms", type=float, metavar="MS", help="longest wait for a batch to fill")
    parser.add_argument("--classes", metavar="NAMES",
                        help="detect and publish only these classes, comma-separated (e.g. person,car)")
    parser.add_argument("--out", metavar="DIR", help="write JSON lines and COCO results per stream here")
    parser.add_argument("--overlay", "--video", action="store_true", help="also write an overlay video per stream (with --out)")
    parser.add_argument("--skip-done", action="store_true",
                        help="with --out: pass over the streams an earlier run into that folder completed "
                             "(<stream>.eos.json says end); resumes an interrupted archive run")
    parser.add_argument("--curve-keys", metavar="DIR", help="encrypt with CURVE; keys from maskstream keys DIR")
    parser.add_argument("--view", nargs="?", type=int, const=VIEW_PORT, metavar="PORT",
                        help=f"watch the run in a browser: the live view (maskstream view) on "
                             f"http://127.0.0.1:PORT/ (default {VIEW_PORT}; 0: any free port), "
                             f"with the frames' pictures (publish.images=jpeg unless --set says otherwise)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    parser.add_argument("--metrics-address", metavar="ADDR",
                        help="serve the metrics on this address (default 127.0.0.1: this machine only; 0.0.0.0: all)")
    parser.add_argument("--wait-subscribers", type=int, metavar="N",
                        help="hold each stream's first frame until N subscribers have subscribed to it")
    parser.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster instead of starting one")
    parser.add_argument("--verbose", action="store_true", help="detailed logs, Ray's and TensorFlow's included")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set sources.max_frames=100; repeatable")
    args = parser.parse_args(argv)
    if args.view is not None and not 0 <= args.view < 65536:
        parser.error(f"--view {args.view}: must be a port, 0-65535")
    return args


def overrides(args: argparse.Namespace) -> list[str]:
    """The command line's options as config overrides, applied after --config and before --set."""
    pairs = []
    if args.source:
        pairs.append(("sources.uris", args.source))
    for key, value in (("publish.endpoint", args.publish), ("sources.mode", args.mode),
                       ("workers.count", args.workers), ("batching.max_batch", args.max_batch),
                       ("batching.max_wait_ms", args.max_wait_ms), ("output.dir", args.out),
                       ("publish.curve_keys", args.curve_keys), ("metrics_port", args.metrics_port),
                       ("metrics_host", args.metrics_address), ("publish.wait_subscribers", args.wait_subscribers),
                       ("ray_address", args.ray_address)):
        if value is not None:
            pairs.append((key, value))
    if args.classes is not None:
        pairs.append(("model.classes", [name.strip() for name in args.classes.split(",") if name.strip()]))
    if args.overlay:
        pairs.append(("output.overlay", True))
    if args.skip_done:
        pairs.append(("output.skip_done", True))
    if args.verbose:
        pairs.append(("verbose", True))
    if args.view is not None:
        pairs.append(("publish.images", "jpeg"))
    # JSON is YAML: lists, numbers and strings with any characters read back exactly.
    return [f"{key}={json.dumps(value)}" for key, value in pairs] + args.set


@contextmanager
def native_stderr_silenced(silence: bool):
    """Silence file descriptor 2 for a while: TensorFlow's C++ start-up lines (oneDNN, CUDA
    probing) ignore TF_CPP_MIN_LOG_LEVEL and would greet every run of a quiet command."""
    if not silence:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    with native_stderr_silenced(not args.verbose):
        from .config import load_pipeline_config
        from .runner import run

    config = load_pipeline_config(args.config, overrides(args))
    try:
        with live_view(config, args.view):
            summary = run(config)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(summary.table(), file=sys.stderr)
    return 1 if summary.errors else 0


@contextmanager
def live_view(config, port: int | None):
    """The live view of this run's publisher on http://127.0.0.1:PORT/ while the run goes on, its
    address printed (nothing when ``port`` is None). It starts first, so that a port in use stops
    the run before it starts, and connects once the publisher is up; with CURVE it uses the
    publisher's own key pair, which the publisher allows (``pipeline.keys.own_client_keys``)."""
    if port is None:
        yield
        return

    def say(status) -> None:
        if status.level == "error":  # the rest (connecting, connected) shows on the page
            print(f"view: {status.text}", file=sys.stderr, flush=True)

    endpoint = connect_address(config.publish.endpoint)
    keys = own_client_keys(config.publish.curve_keys) if config.publish.curve_keys else None
    view = ViewServer(endpoint, port=port, curve_keys=keys, on_status=say, zones=config.zones).start()
    print(f"view: {view.url} shows this run ({endpoint})", flush=True)
    try:
        yield
    finally:
        view.stop()


if __name__ == "__main__":
    sys.exit(main())
