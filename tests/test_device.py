"""What each inference worker gets: threads (`workers.cpus`, auto or a number) and precision (auto)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.errors import ConfigError
from pipeline.config import load_pipeline_config
from pipeline.runner import INGEST_CORES_PER_STREAM, WorkerSlot, auto_slots, decoding_streams
from workers.device import cpu_flags, model_precision, native_bfloat16

REPO = Path(__file__).resolve().parent.parent

# Workers planned and started by the runner's own functions on a one-node Ray cluster of 2 CPUs.
TWO_CPU_NODE = textwrap.dedent("""
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.config import load_pipeline_config
    from pipeline.runner import check_model_inputs, plan_workers, start_workers

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    report = {}
    for case in sys.argv[1:]:
        config = load_pipeline_config(None, ["model.config=configs/test_tiny.yaml", "model.weights=null",
                                             *case.split()])
        slots, use_gpus = plan_workers(config, streams=1)
        workers, placement = start_workers(config, check_model_inputs(config), slots, use_gpus, None)
        report[case] = {"threads": [w["threads"] for w in placement], "cpus": [s.cpus for s in slots],
                        "nodes": len({w["node_id"] for w in placement})}
        for worker in workers.values():
            ray.kill(worker)
    print(json.dumps(report))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a worker never runs more threads than cores")
def test_auto_cpus_split_a_two_cpu_node_between_its_workers_and_an_explicit_value_is_kept():
    cases = ["workers.count=1", "workers.count=2", "workers.count=1 workers.cpus=1", "workers.count=2 workers.cpus=0.5"]
    done = subprocess.run([sys.executable, "-c", TWO_CPU_NODE, *cases], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["workers.count=1"] == {"threads": [2], "cpus": [2], "nodes": 1}       # auto: both cores
    assert report["workers.count=2"] == {"threads": [1, 1], "cpus": [1, 1], "nodes": 1}  # auto: one each
    assert report["workers.count=1 workers.cpus=1"] == {"threads": [1], "cpus": [1.0], "nodes": 1}
    assert report["workers.count=2 workers.cpus=0.5"]["threads"] == [1, 1]  # at least one thread


def test_auto_spreads_workers_over_nodes_of_different_sizes():
    nodes = {"host": {"CPU": 8}, "big": {"CPU": 16}, "small": {"CPU": 2}}
    # the first worker goes where it gets the most cores; the next ones even out the shares
    assert auto_slots(nodes, 1, False, "host", 1) == [WorkerSlot("big", 16, 16)]
    assert sorted(auto_slots(nodes, 3, False, "host", 1), key=lambda s: s.threads) == [
        WorkerSlot("host", 8, 8), WorkerSlot("big", 8, 8), WorkerSlot("big", 8, 8)]
    # ingest and publishing keep cores on the driver's node for many streams
    streams = 8
    kept = int(streams * INGEST_CORES_PER_STREAM)
    assert kept >= 1 and auto_slots({"host": {"CPU": 8}}, 2, False, "host", streams) == \
        [WorkerSlot("host", (8 - kept) // 2, (8 - kept) // 2)] * 2
    # offline, eight files read at once decode at the rate of inference, as one would: no core kept
    assert auto_slots({"host": {"CPU": 2}}, 1, False, "host", decoding_streams(False, 8)) == [WorkerSlot("host", 2, 2)]
    assert decoding_streams(True, 8) == 8
    # more workers than cores: one thread each, a fractional reservation that fits the node
    assert auto_slots({"host": {"CPU": 2}}, 4, False, "host", 1) == [WorkerSlot("host", 0.5, 1)] * 4


def test_auto_gives_gpu_workers_the_cores_of_their_gpu_node():
    nodes = {"host": {"CPU": 4}, "gpus": {"CPU": 8, "GPU": 2}, "one_gpu": {"CPU": 2, "GPU": 1}}
    slots = auto_slots(nodes, 3, True, "host", 1)
    assert sorted(slots, key=lambda s: s.node_id) == [WorkerSlot("gpus", 4, 4), WorkerSlot("gpus", 4, 4),
                                                     WorkerSlot("one_gpu", 2, 2)]


def test_precision_auto_is_bfloat16_only_on_a_cpu_with_native_bfloat16(tmp_path):
    assert model_precision("auto", "float32", "cpu", {"avx512f", "avx512_bf16"}) == "bfloat16"
    assert model_precision("auto", "float32", "cpu", {"amx_tile", "amx_bf16"}) == "bfloat16"
    assert model_precision("auto", "float32", "cpu", {"avx512f", "avx2"}) == "float32"
    assert model_precision("auto", "float32", "gpu", {"avx512_bf16"}) == "float32"
    assert model_precision("model", "bfloat16", "cpu", set()) == "bfloat16"
    assert model_precision("float32", "bfloat16", "cpu", {"avx512_bf16"}) == "float32"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx512f", "avx512_bf16"} and native_bfloat16(cpu_flags(cpuinfo))
    assert cpu_flags(tmp_path / "missing") == set() and not native_bfloat16(set())


@pytest.mark.parametrize("value", ["0", "-1", "many", "[2]"])
def test_workers_cpus_is_auto_or_a_positive_number(value):
    with pytest.raises(ConfigError, match=r"^config\.workers\.cpus: "):
        load_pipeline_config(None, [f"workers.cpus={value}"])
    assert load_pipeline_config().workers.cpus == "auto" and load_pipeline_config(None, ["workers.cpus=3"]).workers.cpus == 3
