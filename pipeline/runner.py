"""Run the pipeline: connect to Ray, start the actors, schedule until the streams end, summarise.

    summary = run(load_pipeline_config("my.yaml", ["batching.max_batch=8"]))

The publisher and the ingest actors run on the driver's node (its cameras, files and publish
address are there); inference workers go wherever Ray finds their resources, one GPU each when
the cluster has GPUs. A bad input stops only its own stream: it is reported in one line and the
others run. Ctrl-C (or `stop`) stops reading, finishes the frames already accepted, sends EOS
for every stream and prints the summary; a second Ctrl-C abandons the unfinished frames.

Every actor may crash: Ray restarts workers (`workers.max_restarts`), ingest actors
(`sources.max_restarts`) and the publisher (`publish.max_restarts`), and the scheduler has each
go on where it stood (see pipeline/scheduler.py); the restarts are in the summary. A run that
fails anyway ends every stream with an EOS saying so, and with one line.
"""
from __future__ import annotations

import logging
import signal
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from models.config import ModelConfig, load_config
from models.errors import PipelineError, SourceError
from workers.inference import InferenceWorkerActor, ModelFactory

from .config import PipelineConfig
from .ingest import IngestActor, Opened
from .metrics import RunStats, RunSummary
from .publisher import PublisherActor
from .scheduler import Scheduler, error_line
from .sources import SourceSpec, parse_source

log = logging.getLogger("maskstream")


def run(config: PipelineConfig, model_factory: ModelFactory | None = None,
        stop: threading.Event | None = None) -> RunSummary:
    """Run `config` to the end of its streams (or until `stop` is set) and return the summary.

    Raises PipelineError (one line) when nothing can run: no source opens, the model or the
    publish endpoint is unusable. Joins `config.ray_address`, or the Ray instance this process
    already has, or starts a local one (and shuts it down after).
    """
    specs = parse_sources(config.sources.uris)
    live = resolve_live(config.sources.mode, specs)
    model_config = check_model_inputs(config)
    publish_score, model_config.box_head.score_threshold = score_thresholds(config, model_config)
    stop = stop or threading.Event()
    started_ray = connect_ray(config)
    actors = []
    try:
        count, use_gpus = plan_workers(config)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        publisher = start_publisher(config, list(model_config.class_names), here, live, publish_score)
        endpoint = ray.get(publisher.ready.remote())
        actors.append(publisher)
        failure = None
        try:
            ingests, opened, errors = start_ingests(specs, config, live, here)
            actors += ingests.values()
            ray.get([publisher.open_stream.remote(sid, answer.fps) for sid, answer in opened.items()])
            workers, placement = start_workers(config, model_config, count, use_gpus, model_factory)
            warm_up(workers, opened, config.batching.max_batch, live)
            ray.get([ingest.start.remote() for ingest in ingests.values()])
            totals = {sid: answer.total for sid, answer in opened.items()}
            actors += workers.values()
            try:
                stats = RunStats(totals, progress=config.progress and not live, metrics_port=config.metrics_port,
                                 metrics_host=config.metrics_host)
            except OSError as error:
                raise PipelineError(f"metrics port {config.metrics_host}:{config.metrics_port}: "
                                    f"{error.strerror}") from None
            try:
                scheduler = Scheduler(ingests, workers, placement, publisher, config.batching, live=live,
                                      live_queue=config.sources.live_queue,
                                       keep_pixels=config.output.overlay or config.publish.images != "none",
                                      stats=stats, stream_fps={sid: answer.fps for sid, answer in opened.items()},
                                      endpoint=endpoint, ingest_restarts=config.sources.max_restarts,
                                      publisher_restarts=config.publish.max_restarts,
                                      publisher_hwm=config.publish.hwm)
                with stop_on_sigint(stop):
                    scheduler.run(stop)
                errors.update({s.stream_id: s.error for s in scheduler.streams.values() if s.error})
                counts = {sid: ingest_counts(actor, scheduler.streams[sid]) for sid, actor in ingests.items()}
            finally:
                stats.close()
        except PipelineError as error:
            failure = str(error)
            raise
        finally:
            publisher_stats = close_publisher(publisher, failure)
        summary = stats.summary(counts, publisher_stats, placement, errors)
        summary.peak_unsent = scheduler.peak_unsent
        return summary
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()


def parse_sources(uris: list[str]) -> list[SourceSpec]:
    """The streams of the configured URIs; PipelineError for a malformed or repeated one."""
    try:
        specs = [parse_source(uri) for uri in uris]
    except SourceError as error:
        raise PipelineError(str(error)) from None
    seen = set()
    for spec in specs:
        if spec.stream_id in seen:
            raise PipelineError(f"two sources have the stream id {spec.stream_id!r}: name them with id=URI")
        seen.add(spec.stream_id)
    return specs


def resolve_live(mode: str, specs: list[SourceSpec]) -> bool:
    """Live or offline: as configured, or (auto) live when any source is a camera or network stream."""
    return any(spec.live for spec in specs) if mode == "auto" else mode == "live"


def connect_ray(config: PipelineConfig) -> bool:
    """Join the configured cluster or start a local Ray, quietly unless verbose; True if started here."""
    if ray.is_initialized():
        return False
    env = {} if config.verbose else {"TF_CPP_MIN_LOG_LEVEL": "3"}
    # "local": a new Ray of this machine's own, not whichever cluster another program left running here.
    ray.init(address=config.ray_address or "local", log_to_driver=config.verbose, include_dashboard=False,
             logging_level=logging.INFO if config.verbose else logging.ERROR,
             runtime_env={"env_vars": env})
    if not config.verbose:
        quiet_crash_reports()
    return True


def quiet_crash_reports() -> None:
    """Ray's driver prints a paragraph to stdout for every actor process that crashes (about the
    OOM killer), log_to_driver or not; the run reports each crash itself, in one line."""
    import ray._private.worker as ray_worker

    print_report = getattr(ray_worker, "print_to_stdstream", None)
    if print_report is None or getattr(print_report, "quieted", False):
        return

    def without_crash_reports(data, ignore_prefix):
        if data.get("pid") != "raylet":
            print_report(data, ignore_prefix)

    without_crash_reports.quieted = True
    ray_worker.print_to_stdstream = without_crash_reports


def check_model_inputs(config: PipelineConfig) -> ModelConfig:
    """The model's validated config; ConfigError or PipelineError (one line) for a bad model
    config or a missing weights file, before any actor starts."""
    weights = config.model.weights
    if weights is not None and not Path(weights).is_file():
        raise PipelineError(f"{weights}: no such weights file")
    model_config = load_config(config.model.config)
    if config.model.score_threshold is not None:
        model_config.box_head.score_threshold = config.model.score_threshold
    return model_config


def score_thresholds(config: PipelineConfig, model_config: ModelConfig) -> tuple[float, float]:
    """(publish, workers'): instances scoring above the first are published as without tracking
    (the model's threshold as configured); with tracking on, the workers keep detections down to
    `tracking.low_score`, so that weak ones can continue tracks (pipeline/tracking.py TrackingStage)."""
    publish = model_config.box_head.score_threshold
    return publish, min(publish, config.tracking.low_score) if config.tracking.enabled else publish


def ingest_counts(actor, stream) -> dict:
    """An ingest actor's counts, or the scheduler's own (`stream`: its StreamState) if it is gone."""
    try:
        return ray.get(actor.counts.remote())
    except ray.exceptions.RayActorError:
        return {"read": stream.read, "dropped": stream.dropped}


def close_publisher(publisher, failure: str | None) -> dict:
    """Close the publisher (EOS for every stream still open: stopped, or the run's `failure`);
    its final stats, or none if it is gone."""
    try:
        return ray.get(publisher.close.remote(*(("error", failure) if failure else ())))
    except ray.exceptions.RayActorError:
        log.error("publisher: gone at the end of the run; streams still open got no EOS")
        return {}


def start_publisher(config: PipelineConfig, class_names: list[str], placement, live: bool = False,
                    publish_score: float = 0.0) -> object:
    """The publisher actor, bound to its endpoint; PipelineError if it cannot bind. Ray restarts
    it after a crash (publish.max_restarts); its calls are not retried (the scheduler resends)."""
    publisher = PublisherActor.options(
        scheduling_strategy=placement, max_restarts=config.publish.max_restarts, max_task_retries=0,
    ).remote(config.publish, config.output, class_names, live, config.tracking, publish_score)
    try:
        ray.get(publisher.ready.remote())
    except ray.exceptions.RayError as error:
        ray.kill(publisher)
        raise PipelineError(error_line(error)) from None
    return publisher


def start_ingests(specs: list[SourceSpec], config: PipelineConfig, live: bool, placement):
    """An ingest actor per stream, opened. Returns ({stream: actor}, {stream: its open() answer},
    {stream: error}) for the streams that opened and those that did not."""
    block = config.batching.max_batch  # offline: one object-store object per batch of frames
    actors = {spec.stream_id: IngestActor.options(
        scheduling_strategy=placement, max_restarts=config.sources.max_restarts, max_task_retries=0,
    ).remote(spec, config.sources, live, block) for spec in specs}
    opened: dict[str, Opened] = dict(zip(actors, ray.get([actor.open.remote() for actor in actors.values()])))
    errors = {sid: answer.error for sid, answer in opened.items() if answer.error}
    for sid in errors:
        ray.kill(actors.pop(sid))
    if not actors:
        if len(errors) == 1:
            raise PipelineError(next(iter(errors.values())))
        raise PipelineError(f"none of the {len(errors)} sources could be opened: " + "; ".join(errors.values()))
    for error in errors.values():
        log.error("%s", error)
    return actors, {sid: opened[sid] for sid in actors}, errors


def plan_workers(config: PipelineConfig) -> tuple[int, bool]:
    """How many inference workers, and whether on GPUs; PipelineError if the cluster cannot hold them."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
    use_gpus = {"auto": gpus > 0, "gpu": True, "cpu": False}[config.workers.device]
    if use_gpus and gpus == 0:
        raise PipelineError("workers.device is gpu, but the Ray cluster has no GPU")
    count = config.workers.count or (gpus if use_gpus else 1)
    # Actors that cannot be placed would wait forever: say so instead.
    if use_gpus and count > gpus:
        raise PipelineError(f"{count} GPU workers need {count} GPUs; the Ray cluster has {gpus}")
    if count * config.workers.cpus > cpus:
        raise PipelineError(f"{count} workers of {config.workers.cpus:g} CPU need {count * config.workers.cpus:g} "
                            f"CPUs; the Ray cluster has {cpus:g} (lower --workers or workers.cpus)")
    return count, use_gpus


def start_workers(config: PipelineConfig, model_config: ModelConfig, count: int, use_gpus: bool,
                  model_factory: ModelFactory | None):
    """The inference workers, ready. Returns ({name: actor}, [their ready() answers]).

    They get the model config itself, read here, so that nodes need no copy of its file."""
    run_id = uuid.uuid4().hex[:8]
    workers = {}
    for i in range(count):
        name = f"maskstream-{run_id}-worker-{i}"
        workers[name] = InferenceWorkerActor.options(
            name=name, num_gpus=1 if use_gpus else 0, num_cpus=config.workers.cpus,
            max_restarts=config.workers.max_restarts, max_task_retries=config.workers.max_task_retries,
        ).remote(model_config, config.model.weights, config.workers.cpus,
                 config.workers.precision, model_factory)
    placement = ray.get([w.ready.remote() for w in workers.values()])
    for answer in placement:
        if answer["note"]:
            log.warning("%s: %s", answer["name"], answer["note"])
    failed = [answer["error"] for answer in placement if answer["error"]]
    if failed:
        for worker in workers.values():
            ray.kill(worker)
        raise PipelineError(failed[0])
    return workers, placement


def warm_up(workers: dict, opened: dict, max_batch: int, live: bool) -> None:
    """Compile every worker's model for the streams' first frame sizes, at the batch sizes the
    scheduler will mostly send: full batches offline, one frame per live stream at a time."""
    sizes = sorted({tuple(answer.size) for answer in opened.values()})
    batches = sorted({1, min(max_batch, len(opened)) if live else max_batch})
    ray.get([worker.warm_up.remote(sizes, batches) for worker in workers.values()])


@contextmanager
def stop_on_sigint(stop: threading.Event):
    """First Ctrl-C sets `stop` (a clean finish); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("stopping: finishing the frames in flight (Ctrl-C again to abandon them)")
        stop.set()

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
