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
import math
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from models.config import ModelConfig, check_classes, config_name, load_config
from models.errors import PipelineError, SourceError, on_signals
from workers.inference import InferenceWorkerActor, ModelFactory

from .config import PipelineConfig
from .ingest import IngestActor
from .metrics import RunStats, RunSummary
from .publisher import PublisherActor
from .scheduler import Scheduler, error_line
from .sinks import done_streams
from .sources import SourceSpec, expand_pattern, missing_file, parse_source

log = logging.getLogger("maskstream")

# What ingest and publishing need on the node that runs them (the driver's), in cores per stream:
# decoding a 1280x720 H.264 stream at 25 frames/s takes under a tenth of a core (the clip decodes
# at 270-360 frames/s on one core, docs/performance.md); the object-store puts, the scheduler and
# the publisher take a few percent more. With `workers.cpus: auto` the workers on that node leave
# floor(streams * this) of its cores to them: none for one to three streams.
INGEST_CORES_PER_STREAM = 0.25


@dataclass(frozen=True)
class WorkerSlot:
    """Where one inference worker goes and what it gets."""
    node_id: str | None    # the node it is placed on (workers.cpus: auto); None: wherever Ray finds room
    cpus: float            # the CPUs Ray reserves for it
    threads: int           # its TensorFlow intra- and inter-op threads


def run(config: PipelineConfig, model_factory: ModelFactory | None = None,
        stop: threading.Event | None = None) -> RunSummary:
    """Run `config` to the end of its streams (or until `stop` is set) and return the summary.

    Raises PipelineError (one line) when nothing can run: no source opens, the model or the
    publish endpoint is unusable. Joins `config.ray_address`, or the Ray instance this process
    already has, or starts a local one (and shuts it down after).
    """
    specs = parse_sources(config.sources.uris)
    check_zone_streams(config, specs)
    specs, skipped = skip_done(config, specs)
    if not specs:  # all done already: nothing to start
        return RunSummary(0.0, {}, {}, [], [], skipped=skipped)
    missing = {spec.stream_id: error for spec in specs if (error := missing_file(spec)) is not None}
    if len(missing) == len(specs):  # said before Ray and the actors start (seconds); the ingests say the rest
        raise no_source_error(missing)
    live = resolve_live(config.sources.mode, specs)
    model_config = check_model_inputs(config)
    publish_score, model_config.box_head.score_threshold = score_thresholds(config, model_config)
    stop = stop or threading.Event()
    started_ray = connect_ray(config)
    actors = []
    try:
        limit = open_limit(config, live, len(specs))
        slots, use_gpus = plan_workers(config, decoding_streams(live, limit))
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        publisher = start_publisher(config, list(model_config.class_names), here, live, publish_score)
        endpoint = ray.get(publisher.ready.remote())
        actors.append(publisher)

        def new_ingest(spec: SourceSpec):
            actor = start_ingest(spec, config, live, here)
            actors.append(actor)
            return actor

        failure = None
        try:
            ingests, opened, errors, waiting = start_ingests(specs, limit, new_ingest)
            ray.get([publisher.open_stream.remote(sid, answer.fps) for sid, answer in opened.items()])
            workers, placement = start_workers(config, model_config, slots, use_gpus, model_factory)
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
                                      publisher_hwm=config.publish.hwm,
                                      waiting=waiting, new_ingest=new_ingest, max_open=limit)
                with stop_on_signals(stop):
                    scheduler.run(stop)
                errors.update(scheduler.errors())
                counts = scheduler.ingest_counts()
            finally:
                stats.close()
        except PipelineError as error:
            failure = str(error)
            raise
        finally:
            publisher_stats = close_publisher(publisher, failure)
        summary = stats.summary(counts, publisher_stats, placement, errors)
        summary.peak_unsent = scheduler.peak_unsent
        summary.not_started = scheduler.not_started
        summary.skipped = skipped
        return summary
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()


def no_source_error(errors: dict[str, str]) -> PipelineError:
    """The run's one line when none of its sources opens: {stream id: that source's error}."""
    if len(errors) == 1:
        return PipelineError(next(iter(errors.values())))
    return PipelineError(f"none of the {len(errors)} sources could be opened: " + "; ".join(errors.values()))


def parse_sources(uris: list[str]) -> list[SourceSpec]:
    """The streams of the configured URIs (a pattern: a stream per path it matches); PipelineError
    for a malformed or repeated one."""
    try:
        specs = [parse_source(path) for uri in uris for path in expand_pattern(uri)]
    except SourceError as error:
        raise PipelineError(str(error)) from None
    seen = {}
    for spec in specs:
        if spec.stream_id in seen:
            raise PipelineError(f"{seen[spec.stream_id]} and {spec.uri} have the same stream id {spec.stream_id!r}: "
                                "name them with id=URI")
        seen[spec.stream_id] = spec.uri
    return specs


def skip_done(config: PipelineConfig, specs: list[SourceSpec]) -> tuple[list[SourceSpec], list[str]]:
    """With `output.skip_done`: (the streams to run, the ids of those an earlier run into
    `output.dir` completed, which are passed over); else (specs, [])."""
    if not config.output.skip_done:
        return specs, []
    done = set(done_streams(config.output.dir, [spec.stream_id for spec in specs]))
    return [spec for spec in specs if spec.stream_id not in done], [s.stream_id for s in specs if s.stream_id in done]


def check_zone_streams(config: PipelineConfig, specs: list[SourceSpec]) -> None:
    """PipelineError (one line) for a zone whose `streams` names a stream this run does not have."""
    ids = [spec.stream_id for spec in specs]
    for i, zone in enumerate(config.zones):
        unknown = [sid for sid in zone.streams or () if sid not in ids]
        if unknown:
            raise PipelineError(f"zones[{i}] ({zone.name}): no stream {unknown[0]!r} in this run "
                                f"(its streams: {', '.join(ids)})")


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
    if config.model.classes is not None:
        check_classes(config.model.classes, model_config.class_names, "model.classes", config_name(model_config))
        model_config.box_head.classes = list(config.model.classes)
    return model_config


def score_thresholds(config: PipelineConfig, model_config: ModelConfig) -> tuple[float, float]:
    """(publish, workers'): instances scoring above the first are published as without tracking
    (the model's threshold as configured); with tracking on, the workers keep detections down to
    `tracking.low_score`, so that weak ones can continue tracks (pipeline/tracking.py TrackingStage)."""
    publish = model_config.box_head.score_threshold
    return publish, min(publish, config.tracking.low_score) if config.tracking.enabled else publish


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
    ).remote(config.publish, config.output, class_names, live, config.tracking, publish_score, config.zones)
    try:
        ray.get(publisher.ready.remote())
    except ray.exceptions.RayError as error:
        ray.kill(publisher)
        raise PipelineError(error_line(error)) from None
    return publisher


def start_ingest(spec: SourceSpec, config: PipelineConfig, live: bool, placement):
    """The ingest actor of one stream, not yet opened. Offline it puts one object-store object per
    batch of frames."""
    return IngestActor.options(
        scheduling_strategy=placement, max_restarts=config.sources.max_restarts, max_task_retries=0,
    ).remote(spec, config.sources, live, config.batching.max_batch)


def decoding_streams(live: bool, streams: int) -> int:
    """The streams whose decoding `workers.cpus: auto` leaves cores for (INGEST_CORES_PER_STREAM):
    live, each is decoded at its camera's rate; offline, the readers are pulled at the rate of
    inference, whatever their number: as much decoding as one stream."""
    return streams if live else 1


def open_limit(config: PipelineConfig, live: bool, streams: int) -> int:
    """How many streams are read at once: every one live, else `sources.max_open` (0: all)."""
    return streams if live or not config.sources.max_open else min(streams, config.sources.max_open)


def start_ingests(specs: list[SourceSpec], limit: int, new_ingest) -> tuple[dict, dict, dict, list[SourceSpec]]:
    """Ingest actors for the first `limit` streams that open, opened. Returns ({stream: actor},
    {stream: its open() answer}, {stream: error}, [the specs left to open later, in order]).
    PipelineError if none opens. `new_ingest(spec)`: makes the actor (`start_ingest`)."""
    actors, opened, errors, waiting = {}, {}, {}, list(specs)
    while waiting and len(actors) < limit:
        chunk, waiting = waiting[:limit - len(actors)], waiting[limit - len(actors):]
        tried = {spec.stream_id: new_ingest(spec) for spec in chunk}
        answers = dict(zip(tried, ray.get([actor.open.remote() for actor in tried.values()])))
        for sid, answer in answers.items():
            if answer.error:
                errors[sid] = answer.error
                ray.kill(tried[sid])
            else:
                actors[sid], opened[sid] = tried[sid], answer
    if not actors:
        raise no_source_error(errors)
    for error in errors.values():
        log.error("%s", error)
    return actors, opened, errors, waiting


def plan_workers(config: PipelineConfig, streams: int = 1) -> tuple[list[WorkerSlot], bool]:
    """The inference workers (a WorkerSlot each) and whether they run on GPUs; PipelineError if
    the cluster cannot hold them. With `workers.cpus: auto` see `auto_slots`; with a number, each
    worker reserves that many CPUs wherever Ray finds them and runs round(cpus) threads."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
    use_gpus = {"auto": gpus > 0, "gpu": True, "cpu": False}[config.workers.device]
    if use_gpus and gpus == 0:
        raise PipelineError("workers.device is gpu, but the Ray cluster has no GPU")
    count = config.workers.count or (gpus if use_gpus else 1)
    # Actors that cannot be placed would wait forever: say so instead.
    if use_gpus and count > gpus:
        raise PipelineError(f"{count} GPU workers need {count} GPUs; the Ray cluster has {gpus}")
    if config.workers.cpus == "auto":
        if not use_gpus and cpus == 0:
            raise PipelineError("the Ray cluster has no CPU for the inference workers")
        nodes = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
        host = ray.get_runtime_context().get_node_id()
        return auto_slots(nodes, count, use_gpus, host, streams), use_gpus
    if count * config.workers.cpus > cpus:
        raise PipelineError(f"{count} workers of {config.workers.cpus:g} CPU need {count * config.workers.cpus:g} "
                            f"CPUs; the Ray cluster has {cpus:g} (lower --workers or workers.cpus)")
    return [WorkerSlot(None, config.workers.cpus, max(1, round(config.workers.cpus)))] * count, use_gpus


def auto_slots(nodes: dict[str, dict], count: int, use_gpus: bool, host: str, streams: int) -> list[WorkerSlot]:
    """`workers.cpus: auto`: `count` workers spread over the cluster's `nodes` ({node id: its Ray
    resources}), each on the node where it gets the most cores (GPU workers: nodes with a GPU
    left), first the driver's node `host` on a tie; every worker on a node gets an even share of
    its cores as threads (at least 1; GPU workers use them for their CPU-side work), less what
    ingest and publishing need on `host` (INGEST_CORES_PER_STREAM for `streams` streams), and
    reserves that share of the node's CPUs (less when the node has fewer CPUs than workers)."""
    order = sorted(nodes, key=lambda node: node != host)
    cores = {node: nodes[node].get("CPU", 0) - (math.floor(streams * INGEST_CORES_PER_STREAM) if node == host else 0)
             for node in order}
    room = {node: int(nodes[node].get("GPU", 0)) if use_gpus else count for node in order}
    placed = dict.fromkeys(order, 0)
    for _ in range(count):
        node = max((n for n in order if placed[n] < room[n] and (use_gpus or nodes[n].get("CPU", 0) > 0)),
                   key=lambda n: cores[n] / (placed[n] + 1))
        placed[node] += 1
    slots = []
    for node, n in placed.items():
        if not n:
            continue
        threads = max(1, math.floor(cores[node] / n))
        slots += [WorkerSlot(node, min(threads, nodes[node].get("CPU", 0) / n), threads)] * n
    return slots


def start_workers(config: PipelineConfig, model_config: ModelConfig, slots: list[WorkerSlot], use_gpus: bool,
                  model_factory: ModelFactory | None):
    """The inference workers, ready. Returns ({name: actor}, [their ready() answers]).

    They get the model config itself, read here, so that nodes need no copy of its file."""
    run_id = uuid.uuid4().hex[:8]
    workers = {}
    for i, slot in enumerate(slots):
        name = f"maskstream-{run_id}-worker-{i}"
        # Soft affinity: a restarted worker whose node is gone still finds a place.
        where = None if slot.node_id is None else NodeAffinitySchedulingStrategy(slot.node_id, soft=True)
        workers[name] = InferenceWorkerActor.options(
            name=name, num_gpus=1 if use_gpus else 0, num_cpus=slot.cpus, scheduling_strategy=where,
            max_restarts=config.workers.max_restarts, max_task_retries=config.workers.max_task_retries,
        ).remote(model_config, config.model.weights, slot.threads, config.workers.precision, model_factory)
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
def stop_on_signals(stop: threading.Event):
    """The first Ctrl-C or SIGTERM (a service manager's stop: systemd, docker stop) sets `stop`,
    a clean finish; a second one interrupts at once."""
    def handle(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("stopping: finishing the frames in flight (Ctrl-C again to abandon them)")
        stop.set()

    with on_signals(handle):
        yield
