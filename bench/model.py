"""Model speed: the TensorFlow Mask R-CNN beside torchvision's, same weights, same frames.

    python bench/model.py [--frames 8] [--batch-sizes 1 2 4] [--bf16] [--skip-torchvision] [--only NAME ...]

Configurations (100 detections kept where the model allows: score threshold 0):
  r50_fpn_800   configs/coco_r50_fpn.yaml with the parity reference's weights (tests/data/tv_reference_r50.npz),
                1280x720 stills of ../shared/data, short side 800; torchvision runs the same (bench/torchvision_speed.py,
                in its own process: torchvision and tensorflow cannot share one);
  r50_fpn_800_direct  the same with TensorFlow's direct 3x3 convolutions instead of Winograd F(4x4, 3x3)
                (models/winograd.py, what float32 inference runs where its op builds): the gain side by side;
  r50_fpn_800_f2  the same with Winograd F(2x2, 3x3);
  r18_fpn_512   the light comparison: ResNet-18 FPN at a short side of 512 (weights of tv_reference_r18_320.npz);
  default       the embedded default model (configs/default_model.yaml + .npz) on 640x360 generated street
                scenes, at its own input size (short side 360), its own score threshold.
`--only NAME ...` runs those configurations and replaces just their rows in the JSON written before.

`--compare seed v2` runs only side-by-side comparisons at batch 1 instead, interleaved because the machine is
shared, and writes bench/results/model_comparisons.json (medians over all calls of wall and process CPU seconds,
and their ratios):
  seed          configs/seed_r101_coco.yaml (its depth and widths from the .h5) against the seed's own predict
                graph under tf-keras (bench/seed_reference.py, in this process: the seed extra), the same .h5
                (--seed-weights: `python bench/seed_reference.py --preset full` writes out/seed_reference_r101_1024.h5),
                the same stills; one call of each in turn, each as its user runs it: the seed's detect (mold_inputs
                with scikit-image, get_anchors, model.predict, unmold_detections with full masks) and
                predict(masks="full"); with --bf16 also ours in precision bfloat16 (not the seed's numbers any more);
  seed_stages   where each side of `seed` spends its time: both graphs cut after each stage (backbone and FPN, RPN
                head, proposals, heads), on one molded frame, --rounds rounds; CPU seconds per stage;
  v2            configs/coco_r50_fpn_v2.yaml against torchvision's maskrcnn_resnet50_fpn_v2 (bench/torchvision_speed.py
                v2_r50_fpn_800 in a subprocess), the weights of tests/data/tv_reference_v2_320.npz at 800/1333, 100
                detections kept, full-frame masks on both sides; --rounds rounds of --frames calls each, the
                two sides alternating round by round.
Per configuration and batch size: one untimed warm-up call, then timed calls; the median seconds per frame
(wall and this process's CPU time), frames per second, the FLOPs per frame (bench/flops.py, analytic; the mask head over the
detections the run kept where the configuration does not keep 100) and the fraction of this machine's float32 floor that the run
reaches: `floor %` against the float32 matmul rate measured in this run (bench/floor.py, before and after the models, the
mean; `--floor-gflops` imposes one), `cpu floor %` the same per CPU-second (a frame's CPU seconds against the matmul's: what
a loaded machine distorts least). The FLOPs are those of direct convolutions: Winograd's 3x3 convolutions
do fewer multiplications, so a fraction above 100% is the floor passed by computing less. TF's threads: `--threads` (default: all cores, as `workers.cpus: auto` gives one worker).
Prints a table and writes bench/results/model.json; the README quotes it.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.chdir(ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from floor import matmul_rate  # noqa: E402
from flops import count_flops  # noqa: E402
TORCHVISION_CONFIGS = ("r50_fpn_800", "r18_fpn_512")   # what bench/torchvision_speed.py runs beside ours
STILLS = [ROOT.parent / "shared" / "data" / f"highway_{i}.jpg" for i in range(1, 7)]


def reference_model(reference: str, min_size: int, precision: str = "float32",
                    config: str = "configs/coco_r50_fpn.yaml", **options):
    import models
    from models.mask_rcnn import MaskRCNN
    from models.tools.convert import convert_state_dict
    from models.tools.torchvision_weights import reference_state_dict

    ref = np.load(ROOT / "tests" / "data" / reference)
    config = models.load_config(config)
    config.backbone.depth = int(ref["depth"])
    config.input.min_size = min_size
    config.box_head.score_threshold = 0.0
    config.box_head.detections_per_image = 100
    config.precision = precision
    return MaskRCNN(config, convert_state_dict(reference_state_dict(ROOT / "tests" / "data" / reference), config),
                    **options)


def torchvision_name(name: str) -> str:
    """The torchvision row a configuration is compared with: r50_fpn_800_bf16, _direct and _f2 with r50_fpn_800."""
    return name.removesuffix("_bf16").removesuffix("_direct").removesuffix("_f2")


def default_model(precision: str = "float32"):
    import models
    config = models.load_config("configs/default_model.yaml")
    config.precision = precision
    return models.load_model(config, weights="configs/default_model.npz")


def stills() -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in STILLS]


def scenes(count: int) -> list[np.ndarray]:
    from models.data.scenes import StreetScene
    scene = StreetScene(seed=4242, width=640, height=360)
    return [scene.frame(t)[0] for t in range(count)]


def time_model(model, frames: list[np.ndarray], batch: int, total_frames: int) -> dict:
    calls = max(1, total_frames // batch)
    batches = [[frames[(i * batch + j) % len(frames)] for j in range(batch)] for i in range(calls)]
    model.predict(batches[0], masks="rle")
    wall, cpu, detections = [], [], []
    for frames_in_call in batches:
        w0, c0 = time.perf_counter(), time.process_time()
        out = model.predict(frames_in_call, masks="rle")
        wall.append((time.perf_counter() - w0) / batch)
        cpu.append((time.process_time() - c0) / batch)
        detections.extend(len(d) for d in out)
    s = statistics.median(wall)
    return {"seconds_per_frame": s, "cpu_seconds_per_frame": statistics.median(cpu), "fps": 1.0 / s,
            "detections_per_frame": statistics.mean(detections), "calls": calls}


def torchvision_results(args, names: list[str]) -> dict:
    out = args.torchvision_json
    configs = sorted({torchvision_name(name) for name in names} & set(TORCHVISION_CONFIGS))
    if not configs:
        return {}
    cmd = [sys.executable, str(ROOT / "bench" / "torchvision_speed.py"), "--json", str(out), "--frames",
           str(args.frames), "--batch-sizes", *map(str, args.batch_sizes), "--threads", str(args.threads),
           "--configs", *configs]
    subprocess.run(cmd, check=True, cwd=ROOT / "bench")
    return json.loads(out.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="frames timed per configuration and batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-torchvision", action="store_true", help="reuse bench/results/torchvision_speed.json")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "model.json")
    parser.add_argument("--bf16", action="store_true", help="also run r50_fpn_800 and default (and, with --compare "
                        "seed, the seed configuration) with precision: bfloat16")
    parser.add_argument("--floor-gflops", type=float, help="the float32 floor in GFLOP/s (default: measured here)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="TensorFlow's intra- and inter-op threads")
    parser.add_argument("--only", nargs="+", help="run only these configurations (and torchvision only beside them) "
                        "and keep the other rows of --json")
    parser.add_argument("--torchvision-json", type=Path, default=ROOT / "bench" / "results" / "torchvision_speed.json")
    parser.add_argument("--compare", nargs="+", choices=sorted(COMPARISONS),
                        help="run only these side-by-side comparisons (see above)")
    parser.add_argument("--seed-weights", type=Path, default=ROOT / "out" / "seed_reference_r101_1024.h5",
                        help="--compare seed: the seed's .h5 (default: what seed_reference.py --preset full writes)")
    parser.add_argument("--rounds", type=int, default=3, help="--compare v2 and seed_stages: rounds per side")
    args = parser.parse_args(argv)

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.compare:
        run_comparisons(args)
        return

    load_before = os.getloadavg()[0]
    floor_before = matmul_rate()
    results = {}
    runs = [("r50_fpn_800", lambda: reference_model("tv_reference_r50.npz", 800), stills(), 100),
            # the same with TensorFlow's direct 3x3 convolutions instead of Winograd F(4x4, 3x3) (models/winograd.py),
            # and with Winograd F(2x2, 3x3)
            ("r50_fpn_800_direct", lambda: reference_model("tv_reference_r50.npz", 800, winograd_tile=None),
             stills(), 100),
            ("r50_fpn_800_f2", lambda: reference_model("tv_reference_r50.npz", 800, winograd_tile=2), stills(), 100),
            ("r18_fpn_512", lambda: reference_model("tv_reference_r18_320.npz", 512), stills(), 100)]
    if args.bf16:
        runs.append(("r50_fpn_800_bf16", lambda: reference_model("tv_reference_r50.npz", 800, "bfloat16"), stills(),
                     100))
    if (ROOT / "configs" / "default_model.npz").is_file():
        runs.append(("default", default_model, scenes(24), None))
        if args.bf16:
            runs.append(("default_bf16", lambda: default_model("bfloat16"), scenes(24), None))
    if args.only:
        unknown = sorted(set(args.only) - {name for name, *_ in runs})
        if unknown:
            parser.error(f"--only: no configuration {', '.join(unknown)}")
        runs = [run for run in runs if run[0] in args.only]
        results = json.loads(args.json.read_text())["tensorflow"] if args.json.is_file() else {}
    for name, build, frames, dets in runs:
        model = build()
        results[name] = {"frame": list(frames[0].shape[:2]), "batches": {}}
        for batch in args.batch_sizes:
            r = time_model(model, frames, batch, args.frames)
            # The mask head's work is per detection: count the detections this run kept, where not fixed.
            kept = dets if dets is not None else round(r["detections_per_frame"])
            flops = results[name]["flops_per_frame"] = flops_for(model.config, frames[0], kept)
            r["gflops_per_cpu_second"] = flops / r["cpu_seconds_per_frame"] / 1e9
            results[name]["batches"][str(batch)] = r
            print(f"{name:12s} batch {batch}: {r['seconds_per_frame']:.3f} s/frame  {r['fps']:.2f} fps  "
                  f"{r['cpu_seconds_per_frame']:.3f} CPU s/frame", flush=True)
    floor_after = matmul_rate()
    floor = {"gflops_per_second": args.floor_gflops or (floor_before["gflops_per_second"] +
                                                        floor_after["gflops_per_second"]) / 2,
             "gflops_per_cpu_second": (floor_before["gflops_per_cpu_second"] + floor_after["gflops_per_cpu_second"]) / 2,
             "measured_before": floor_before, "measured_after": floor_after, "imposed": args.floor_gflops is not None}
    for name, *_ in runs:
        for b in results[name]["batches"].values():
            r = results[name]
            b["floor_fraction"] = r["flops_per_frame"] / b["seconds_per_frame"] / (floor["gflops_per_second"] * 1e9)
            b["cpu_floor_fraction"] = b["gflops_per_cpu_second"] / floor["gflops_per_cpu_second"]
    torchvision = (json.loads(args.torchvision_json.read_text())
                   if args.skip_torchvision else torchvision_results(args, [name for name, *_ in runs]))
    report = {"tensorflow": results, "torchvision": torchvision, "load_average_before": load_before,
              "load_average_after": os.getloadavg()[0], "threads": args.threads, "floor": floor}
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


def seed_sides(args):
    """Both sides of the seed comparison from --seed-weights: (our MaskRCNN of configs/seed_*.yaml, the
    bench/seed_reference module, its SeedConfig at batch 1, the seed's predict graph with the .h5 loaded)."""
    if not args.seed_weights.is_file():
        raise SystemExit(f"{args.seed_weights}: no such file; `python bench/seed_reference.py --preset full` writes "
                         "the seed's ResNet-101 .h5 (or give --seed-weights)")
    import seed_reference as seed

    from models.mask_rcnn import MaskRCNN
    from models.tools.seed_weights import convert_seed_h5

    config, params = convert_seed_h5(args.seed_weights)
    seed_config = seed.SeedConfig(
        IMAGES_PER_GPU=1, BACKBONE=f"resnet{config.backbone.depth}", WIDTH_MULTIPLIER=config.backbone.width / 64,
        TOP_DOWN_PYRAMID_SIZE=config.fpn.channels, FPN_CLASSIF_FC_LAYERS_SIZE=config.box_head.fc_dim,
        IMAGE_MIN_DIM=config.input.min_size, IMAGE_MAX_DIM=config.input.max_size,
        DETECTION_MIN_CONFIDENCE=config.box_head.score_threshold)
    graph = seed.get_predict_model(seed_config)
    graph.load_weights(str(args.seed_weights), by_name=True)
    return MaskRCNN(config, params), seed, seed_config, graph


def compare_seed(args) -> dict:
    """configs/seed_*.yaml against the seed's own graph under tf-keras, one call of each in turn (batch 1);
    with --bf16 also ours in precision bfloat16 (the same weights: faster, no longer exactly the seed's)."""
    from models.mask_rcnn import MaskRCNN

    ours, seed, seed_config, graph = seed_sides(args)
    config = ours.config
    stages = {"mold": [], "predict": [], "unmold": []}

    def seed_detect(frame: np.ndarray) -> int:
        """The seed's detect_image without drawing: mold_inputs, get_anchors, model.predict, unmold_detections."""
        t0 = time.perf_counter()
        molded, metas, windows, _ = seed.mold_inputs(seed_config, [frame])
        anchors = seed.get_anchors(seed_config, molded[0].shape)
        t1 = time.perf_counter()
        detections, _, _, mrcnn_mask, _, _, _ = graph.predict(
            [molded, metas, np.broadcast_to(anchors, (1,) + anchors.shape)], batch_size=1, verbose=0)
        t2 = time.perf_counter()
        result = seed.unmold_detections(detections[0], mrcnn_mask[0], frame.shape, molded[0].shape, windows[0])
        for stage, seconds in zip(stages, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
            stages[stage].append(seconds)
        return len(result["scores"])

    def detector(model):
        return lambda frame: len(model.predict([frame], masks="full")[0])

    frames = stills()
    sides = {"ours": detector(ours), "seed_graph": seed_detect}
    if args.bf16:
        config16 = copy.deepcopy(config)
        config16.precision = "bfloat16"
        sides["ours_bfloat16"] = detector(MaskRCNN(config16, {n: v.numpy() for n, v in ours.params.items()}))
    for detect in sides.values():
        detect(frames[0])                                    # warm-up: tracing, not timed
    for stage in stages.values():
        stage.clear()
    calls = {name: [] for name in sides}
    cpu = {name: [] for name in sides}
    detections = {name: [] for name in sides}
    for i in range(args.frames):
        for name, detect in (sides.items() if i % 2 == 0 else reversed(sides.items())):
            start, cpu_start = time.perf_counter(), time.process_time()
            detections[name].append(detect(frames[i % len(frames)]))
            calls[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    result = {name: side_summary(calls[name], cpu[name], detections[name]) for name in sides}
    result["seed_graph"]["stage_seconds_per_frame"] = {k: statistics.median(v) for k, v in stages.items()}
    result["ratio"] = result["ours"]["fps"] / result["seed_graph"]["fps"]
    result["cpu_ratio"] = result["seed_graph"]["cpu_seconds_per_frame"] / result["ours"]["cpu_seconds_per_frame"]
    if "ours_bfloat16" in result:
        result["bfloat16_ratio"] = result["ours_bfloat16"]["fps"] / result["seed_graph"]["fps"]
        result["bfloat16_cpu_ratio"] = (result["seed_graph"]["cpu_seconds_per_frame"]
                                        / result["ours_bfloat16"]["cpu_seconds_per_frame"])
        result["bfloat16_detections"] = detections["ours_bfloat16"]
        result["float32_detections"] = detections["ours"]
    result["weights"] = str(args.seed_weights)
    result["model"] = (f"{config.name} ResNet-{config.backbone.depth} width {config.backbone.width} at "
                       f"{config.input.max_size}, against the seed's graph")
    result["frame"] = list(frames[0].shape[:2])
    return result


def compare_seed_stages(args) -> dict:
    """Where the time of each side of `compare_seed` goes: the graph cut after each stage, on the same molded
    frame (highway_1), the cuts called in turn round by round (--rounds); the median CPU and wall seconds of
    each cut, and each stage's as the difference of consecutive cuts. The seed's cuts are Keras models on its
    layers' outputs (fpn_p2..fpn_p6, rpn_class + rpn_bbox, ROI, mrcnn_detection), called with predict_on_batch;
    ours are tf.functions of the same stage functions the graph runs (pyramid, rpn_head,
    features_and_proposals). Our heads (box head, detection, mask head on the valid detections) are one
    stage; the seed's are split: box head and detection layer, then the mask head on all
    DETECTION_MAX_INSTANCES slots."""
    import tensorflow as tf
    import tf_keras as keras

    from models import preprocess
    from models.mask_rcnn import logits_per_anchor, pyramid
    from models.rpn import rpn_head

    ours, seed, seed_config, graph = seed_sides(args)
    cfg = ours.config
    frame = stills()[0]
    (_, inputs, _), = list(ours._graph_calls([frame]))
    molded, windows = [tf.constant(x) for x in inputs]

    def features(images):
        return pyramid(ours.stage_params, preprocess.normalize(images, cfg.input.mean, cfg.input.std,
                                                         cfg.input.pixel_scale), cfg)
    ours_cuts = {"backbone_fpn": tf.function(features),
                 "rpn_head": tf.function(lambda x: rpn_head(ours.stage_params, features(x), cfg.rpn.conv_depth,
                                                            logits_per_anchor(cfg))),
                 "proposals": tf.function(lambda x: ours.features_and_proposals(x).proposals),
                 "heads": lambda x: ours.graph_for(*x.shape[1:3])(x, windows)}
    molded_seed, metas, _, _ = seed.mold_inputs(seed_config, [frame])
    anchors = seed.get_anchors(seed_config, molded_seed[0].shape)
    seed_inputs = [molded_seed, metas, np.broadcast_to(anchors, (1,) + anchors.shape)]

    def cut(*names):
        return keras.Model(graph.inputs, [graph.get_layer(n).output for n in names]).predict_on_batch
    seed_cuts = {"backbone_fpn": cut("fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6"),
                 "rpn_head": cut("rpn_class", "rpn_bbox"), "proposals": cut("ROI"),
                 "box_head_detection": cut("mrcnn_detection"), "mask_head": graph.predict_on_batch}
    calls = [(("ours", name), lambda f=f: f(molded)) for name, f in ours_cuts.items()]
    calls += [(("seed_graph", name), lambda f=f: f(seed_inputs)) for name, f in seed_cuts.items()]
    for _, call in calls:
        call()                                               # warm-up: tracing, not timed
    wall = {key: [] for key, _ in calls}
    cpu = {key: [] for key, _ in calls}
    for _ in range(args.rounds):
        for key, call in calls:
            start, cpu_start = time.perf_counter(), time.process_time()
            call()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - cpu_start)
    result = {}
    for side in ("ours", "seed_graph"):
        names = [name for s, name in wall if s == side]
        cum_cpu = [statistics.median(cpu[side, n]) for n in names]
        cum_wall = [statistics.median(wall[side, n]) for n in names]
        result[side] = {
            "cumulative_cpu_seconds": dict(zip(names, cum_cpu)), "cumulative_seconds": dict(zip(names, cum_wall)),
            "stage_cpu_seconds": {n: c - p for n, c, p in zip(names, cum_cpu, [0.0] + cum_cpu[:-1])}}
    result["cpu_ratio"] = (result["seed_graph"]["cumulative_cpu_seconds"]["mask_head"]
                           / result["ours"]["cumulative_cpu_seconds"]["heads"])
    result["rounds"] = args.rounds
    result["frame"] = list(frame.shape[:2])
    result["model"] = f"{cfg.name} ResNet-{cfg.backbone.depth} at {cfg.input.max_size}: each side's graph cut after each stage"
    return result


def compare_v2(args) -> dict:
    """configs/coco_r50_fpn_v2.yaml against torchvision's v2 (a subprocess), rounds alternating (batch 1)."""
    model = reference_model("tv_reference_v2_320.npz", 800, config="configs/coco_r50_fpn_v2.yaml")
    frames = stills()
    model.predict(frames[:1], masks="rle")                     # warm-up: tracing, not timed
    calls = {"ours": [], "torchvision": []}
    cpu = {"ours": [], "torchvision": []}
    detections = {"ours": [], "torchvision": []}
    out = ROOT / "bench" / "results" / "torchvision_speed_v2.json"
    for _ in range(args.rounds):
        for frame in (frames[i % len(frames)] for i in range(args.frames)):
            start, cpu_start = time.perf_counter(), time.process_time()
            detections["ours"].append(len(model.predict([frame], masks="full")[0]))
            calls["ours"].append(time.perf_counter() - start)
            cpu["ours"].append(time.process_time() - cpu_start)
        subprocess.run([sys.executable, str(ROOT / "bench" / "torchvision_speed.py"), "--configs", "v2_r50_fpn_800",
                        "--batch-sizes", "1", "--frames", str(args.frames), "--json", str(out)], check=True,
                       cwd=ROOT / "bench")
        timing = json.loads(out.read_text())["configs"]["v2_r50_fpn_800"]["batch_sizes"]["1"]
        calls["torchvision"] += timing["call_seconds"]
        cpu["torchvision"] += [timing["cpu_seconds_per_frame"]] * len(timing["call_seconds"])   # its median per round
        detections["torchvision"].append(timing["min_detections_per_frame"])
    result = {name: side_summary(calls[name], cpu[name], detections[name]) for name in calls}
    result["ratio"] = result["ours"]["fps"] / result["torchvision"]["fps"]
    result["cpu_ratio"] = result["torchvision"]["cpu_seconds_per_frame"] / result["ours"]["cpu_seconds_per_frame"]
    result["frame"] = list(frames[0].shape[:2])
    result["model"] = "coco_r50_fpn_v2 at 800/1333, against torchvision's maskrcnn_resnet50_fpn_v2"
    return result


def side_summary(seconds: list[float], cpu_seconds: list[float], detections: list[int]) -> dict:
    """Median seconds per call (batch 1: per frame), frames per second, the median CPU seconds of the process
    (all threads: what a loaded machine distorts least), every call, detections per frame."""
    median = statistics.median(seconds)
    return {"seconds_per_frame": median, "fps": 1.0 / median, "cpu_seconds_per_frame": statistics.median(cpu_seconds),
            "calls": len(seconds), "call_seconds": [round(s, 4) for s in seconds],
            "min_detections_per_frame": min(detections)}


COMPARISONS = {"seed": compare_seed, "seed_stages": compare_seed_stages, "v2": compare_v2}


def run_comparisons(args) -> None:
    out = ROOT / "bench" / "results" / "model_comparisons.json"
    report = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.compare:
        before = os.getloadavg()[0]
        report[name] = {**COMPARISONS[name](args), "load_average": [before, os.getloadavg()[0]], "batch": 1}
        r = report[name]
        other = "seed_graph" if "seed_graph" in r else "torchvision"
        if "stage_cpu_seconds" in r["ours"]:
            for side in ("ours", other):
                print(f"{name} {side}: CPU seconds per stage " + ", ".join(
                    f"{stage} {seconds:.2f}" for stage, seconds in r[side]["stage_cpu_seconds"].items()), flush=True)
            print(f"{name}: whole graph in CPU seconds, {other} / ours {r['cpu_ratio']:.2f}", flush=True)
            continue
        print(f"{name} ({r['model']}): ours {r['ours']['fps']:.3f} fps, {other} {r[other]['fps']:.3f} fps, ratio "
              f"{r['ratio']:.2f}, in CPU seconds {r['cpu_ratio']:.2f} (load {before:.1f} -> {os.getloadavg()[0]:.1f})",
              flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def flops_for(config, frame: np.ndarray, detections: int) -> float:
    """Analytic FLOPs of one frame through `config` with `detections` masks (bench/flops.py)."""
    return float(count_flops(config.to_dict(), frame.shape[1], frame.shape[0], detections)["total"])


def tv_fps(torchvision: dict, name: str, batch: str):
    return tv_value(torchvision, name, batch, "frames_per_second")


def tv_cpu_seconds(torchvision: dict, name: str, batch: str):
    return tv_value(torchvision, name, batch, "cpu_seconds_per_frame")


def tv_value(torchvision: dict, name: str, batch: str, key: str):
    try:
        return torchvision["configs"][name]["batch_sizes"][batch][key]
    except (KeyError, TypeError):
        return None


def print_table(report: dict) -> None:
    floor = report["floor"]
    print(f"\nfloat32 floor: {floor['gflops_per_second']:.0f} GFLOP/s, {floor['gflops_per_cpu_second']:.0f} GFLOP per "
          f"CPU-second ({report['threads']} threads; load {report['load_average_before']:.1f} before, "
          f"{report['load_average_after']:.1f} after)")
    print(f"{'config':18s} {'batch':>5s} {'TF fps':>8s} {'torchvision fps':>16s} {'ratio':>6s} {'CPU ratio':>9s} "
          f"{'GFLOP/frame':>12s} {'floor %':>8s} {'cpu floor %':>11s}")
    for name, r in report["tensorflow"].items():
        for batch, b in r["batches"].items():
            tv = tv_fps(report["torchvision"], torchvision_name(name), batch)
            tv_cpu = tv_cpu_seconds(report["torchvision"], torchvision_name(name), batch)
            ratio = f"{b['fps'] / tv:.2f}" if tv else "-"
            cpu_ratio = f"{tv_cpu / b['cpu_seconds_per_frame']:.2f}" if tv_cpu else "-"
            print(f"{name:18s} {batch:>5s} {b['fps']:8.2f} {tv if tv else '-':>16} {ratio:>6s} {cpu_ratio:>9s} "
                  f"{r['flops_per_frame'] / 1e9:12.1f} {b['floor_fraction'] * 100:8.0f} {b.get('cpu_floor_fraction', float('nan')) * 100:11.0f}")


if __name__ == "__main__":
    main()
