"""`pacctl train` end to end on real daemons on loopback: both phases, every family, equivalence.

The equivalence tests run 2 stages x 2 replicas on four daemons and compare the adapter with
single-process training (pac.train.loop.train) on the same seed, data and mini-batch order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import device_jobs, start_daemons
from safetensors.torch import load_file

from pac.cluster.assign import phase2_order
from pac.cluster.context import Device
from pac.cluster.controller import RunOptions, run_training
from pac.cluster.measure import fixed_plan
from pac.jobfile import parse_job
from pac.planner.workload import TrainingJob
from pac.techniques.top import state_from_adapter, trained_tensors
from pac.train.loop import TrainConfig, batches, train
from tests.tolerance import ADAM_ROUNDING_SHARE, adam_movement_bound, assert_trained_close

LEARNING_RATE = 1e-2


def write_data(path: Path, task: str, count: int) -> Path:
    rows = []
    for i in range(count):
        if task == "lm":
            rows.append({"prompt": f"what is {i}?", "answer": f"it is {i * 7}" * (1 + i % 3)})
        else:
            rows.append({"text": ("good " if i % 2 else "bad ") * (1 + i % 3) + f"item{i}", "label": i % 2})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_job(tmp_path: Path, model: str, task: str, count: int, epochs: int, batch_size: int,
             precision: str = "fp32", quantization: str = "none", eval_count: int = 0, validation: float = 0,
             **training):
    data = write_data(tmp_path / f"{task}.jsonl", task, count)
    evaluation = {"eval": str(write_data(tmp_path / f"{task}-eval.jsonl", task, eval_count))} if eval_count else {}
    evaluation |= {"validation": validation} if validation else {}
    mapping = {
        "model": {"name_or_path": model, "quantization": quantization},
        "data": {"train": str(data), "task": task, **evaluation},
        "training": {"epochs": epochs, "batch_size": batch_size, "seq_len": 32, "learning_rate": LEARNING_RATE,
                     "seed": 3, "top_layers": 0, **training},  # the side network's pipeline, unless a test tunes top layers
        "cache": {"precision": precision, "directory": str(tmp_path / "cache")},
        "devices": {"mode": "list", "addresses": ["127.0.0.1:1"], "insecure": True},
        "output": {"directory": str(tmp_path / "out")},
    }
    return parse_job(mapping, source=str(tmp_path / "job.toml"))


def devices_of(daemons) -> list[Device]:
    return [Device(d.node_id, d.address, "localhost") for d in daemons]


def single_process(job, metrics_order) -> tuple[dict, list[float]]:
    """Train the same job in one process: same initialisation (pac.cluster.prepare.prepare), seed and order."""
    from pac.cluster.prepare import prepare

    prepared = prepare(job, lambda line: None, whole=True)
    training = job.training
    config = TrainConfig(epochs=training.epochs, batch_size=training.batch_size,
                         learning_rate=training.learning_rate, seed=training.seed,
                         max_grad_norm=training.max_grad_norm)
    result = train(prepared.model, prepared.train_items, prepared.task, prepared.pad_id, config,
                   batch_order=metrics_order(prepared))
    return trained_tensors(prepared.model), result.losses


def assert_same(expected: dict, path: Path, steps: int, share: float = ADAM_ROUNDING_SHARE) -> None:
    """The adapter at `path` is `expected` up to rounding after `steps` AdamW steps (tests/tolerance.py)."""
    assert_trained_close(state_from_adapter(load_file(str(path))), expected, adam_movement_bound(LEARNING_RATE, steps),
                         share)


def run_and_compare(tmp_path, four, model, task, layout, micro_batches, phase2, count=14, epochs=2,
                    batch_size=6, precision="fp32", quantization="none", tolerance=1.0, **training):
    """`tolerance` scales the rounding allowed (1: fp32 arithmetic throughout)."""
    """Run the job on the daemons with `layout` [(first, end, [daemon index], [shares])] and compare every
    step's loss and the final adapter with one process trained in the same order."""
    devices = devices_of(four)
    ids = [d.node_id for d in devices]
    job = make_job(tmp_path, model, task, count=count, epochs=epochs, batch_size=batch_size, precision=precision,
                   quantization=quantization, **training)
    stages = [(first, end, [ids[i] for i in who], shares) for first, end, who, shares in layout]
    plan = fixed_plan(model, TrainingJob(samples=count, batch_size=batch_size, epochs=epochs), stages,
                      micro_batches=micro_batches, phase2_shares={ids[i]: n for i, n in phase2.items()})
    out = tmp_path / "out"
    metrics, controller = run_training(job, devices, None, out, RunOptions(), log_line=lambda line: None, plan=plan)

    def order(prepared):
        items = dict(zip(prepared.keys, prepared.train_items, strict=True))
        first = batches(prepared.train_items, batch_size, torch.Generator().manual_seed(3))
        later = phase2_order(items, controller.assigned_by_node, controller.step_counts_by_node, 3,
                             range(1, epochs)) if epochs > 1 else {}
        return lambda epoch: first if epoch == 0 else later[epoch]

    expected, losses = single_process(job, order)
    got_losses = [s["loss"] for s in metrics["steps"]]
    assert got_losses == pytest.approx(losses, rel=1e-4 * tolerance, abs=1e-5 * tolerance)
    assert_same(expected, out / "adapter.safetensors", len(got_losses), ADAM_ROUNDING_SHARE * tolerance)
    return metrics, out


def test_one_step_equals_single_process(tmp_path, four):
    """One mini-batch, two stages of two replicas: the adapter after one optimiser step."""
    metrics, _ = run_and_compare(tmp_path, four, "tiny-bert", "classification",
                                 [(0, 2, [0, 1], [1, 1]), (2, 3, [2, 3], [1, 2])], 2, {0: 1, 1: 1, 2: 1, 3: 1},
                                 count=6, epochs=1, batch_size=6)
    assert len(metrics["steps"]) == 1 and metrics["phase2"] is None


@pytest.mark.parametrize("model,task", [("tiny-bert", "classification"), ("tiny-llama", "lm")])
def test_two_stages_two_replicas_equal_single_process(tmp_path, four, model, task):
    """A small epoch in each phase (the last mini-batch short), two stages x two replicas, uneven shares."""
    metrics, out = run_and_compare(tmp_path, four, model, task, [(0, 2, [0, 1], [1, 1]), (2, 3, [2, 3], [2, 1])],
                                   2, {0: 1, 1: 2, 2: 2, 3: 1})
    assert metrics["phase2"]["moved_bytes"] > 0  # states of other stages had to move
    assert (out / "loss.png").stat().st_size > 1000 and (out / "timeline.png").stat().st_size > 1000
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert not any((tmp_path / "cache").rglob("records.bin"))  # removed: the job does not keep its cache


@pytest.mark.parametrize("model,task,layout,phase2", [
    # decoder-only LM: 3 stages of one device, phase 2 on three devices
    ("tiny-gpt2", "lm", [(0, 1, [0], [1]), (1, 2, [1], [1]), (2, 3, [2], [1])], {0: 1, 1: 1, 2: 1}),
    # encoder-decoder LM: the middle stage crosses from the encoder into the decoder
    ("tiny-t5", "lm", [(0, 1, [0], [1]), (1, 3, [1, 2], [1, 1]), (3, 4, [3], [1])], {0: 1, 1: 1, 3: 2}),
    # encoder-decoder classification, a stage that ends the encoder
    ("tiny-bart", "classification", [(0, 2, [0, 1], [1, 1]), (2, 4, [2], [1])], {1: 1, 2: 1}),
])
def test_families_both_phases(tmp_path, four, model, task, layout, phase2):
    run_and_compare(tmp_path, four, model, task, layout, 3, phase2, count=10, batch_size=5)


@pytest.mark.parametrize("model,task,side_layers", [("tiny-bert", "classification", None), ("tiny-llama", "lm", [])])
def test_tuned_top_layers_both_phases_equal_single_process(tmp_path, four, model, task, side_layers):
    """`training.top_layers = 1`: the last stage's replicas train the tuned layer (LoRA) in phase 1, every
    phase-2 member loads it and trains it from the cached input of the layer below; with `side_layers = []`
    no side network runs at all. The same adapter as one process."""
    training = {"top_layers": 1} | ({"side_layers": side_layers} if side_layers is not None else {})
    metrics, out = run_and_compare(tmp_path, four, model, task, [(0, 2, [0, 1], [1, 1]), (2, 3, [2, 3], [2, 1])],
                                   2, {0: 1, 1: 2, 2: 2, 3: 1}, **training)
    tuned = [k for k in load_file(str(out / "adapter.safetensors")) if k.startswith("top.") and "lora_B" in k]
    assert tuned and metrics["phase2"]["moved_bytes"] > 0


def test_bf16_gradient_allreduce_both_phases(tmp_path, four):
    """`training.allreduce_precision = "bf16"`: the replicas' and members' gradients travel in 16 bits and
    are summed in float32; the job trains as one process does, to bf16's rounding of the gradients."""
    devices = devices_of(four)
    ids = [d.node_id for d in devices]
    job = make_job(tmp_path, "tiny-bert", "classification", count=14, epochs=2, batch_size=6,
                   allreduce_precision="bf16")
    assert job.train_config().allreduce_precision == "bf16"
    plan = fixed_plan("tiny-bert", TrainingJob(samples=14, batch_size=6, epochs=2),
                      [(0, 2, ids[:2], [1, 1]), (2, 3, ids[2:], [2, 1])], micro_batches=2,
                      phase2_shares={ids[0]: 1, ids[1]: 2, ids[2]: 2, ids[3]: 1})
    metrics, controller = run_training(job, devices, None, tmp_path / "out", RunOptions(), log_line=lambda line: None,
                                       plan=plan)

    def order(prepared):
        first = batches(prepared.train_items, 6, torch.Generator().manual_seed(3))
        later = phase2_order(dict(zip(prepared.keys, prepared.train_items, strict=True)), controller.assigned_by_node,
                             controller.step_counts_by_node, 3, range(1, 2))
        return lambda epoch: first if epoch == 0 else later[epoch]

    expected, losses = single_process(job, order)
    got = [s["loss"] for s in metrics["steps"]]
    assert got == pytest.approx(losses, rel=2e-2) and got != pytest.approx(losses, rel=1e-7, abs=0)
    assert set(state_from_adapter(load_file(str(tmp_path / "out" / "adapter.safetensors")))) == set(expected)


def test_one_stage_steps_inside_run_step_and_equals_single_process(tmp_path, four):
    """Data parallel only (one stage of three replicas, uneven shares): each replica clips by its own norm
    and takes its optimiser step inside RunStep (no ApplyStep); the same adapter as one process, with the
    gradient norm clipped on every step."""
    run_and_compare(tmp_path, four, "tiny-bert", "classification", [(0, 3, [0, 1, 2], [2, 1, 1])], 1,
                    {0: 2, 1: 1, 2: 1}, count=12, batch_size=4, max_grad_norm=0.05)


def test_bf16_backbone_both_phases_equal_single_process(tmp_path, four):
    """The frozen backbone held in bf16 on every stage (model.quantization = "bf16"), the side network in
    fp32: the same adapter as one process with the same bf16 backbone, to bf16's precision (a micro-batch
    pads to its own longest sample, which changes the backbone's summation order, and bf16 rounds the
    difference up to a unit in the last place, ~0.4%: fp32 agrees to 1e-7 there)."""
    run_and_compare(tmp_path, four, "tiny-llama", "classification", [(0, 2, [0, 1], [1, 1]), (2, 3, [2], [1])],
                    2, {0: 1, 1: 1, 2: 1}, count=10, batch_size=4, quantization="bf16", tolerance=50.0)


def test_phase2_with_activation_checkpointing_from_an_fp16_cache(tmp_path, four):
    """training.activation_checkpointing: phase 2 recomputes the side blocks and keeps the fp16 states
    16-bit; the same job without it (the same fp16 cache, widened on reading) trains the same adapter."""
    devices = devices_of(four)
    ids = [d.node_id for d in devices]
    plan = fixed_plan("tiny-llama", TrainingJob(samples=10, batch_size=5, epochs=2),
                      [(0, 2, ids[:1], [1]), (2, 3, ids[1:2], [1])], micro_batches=2,
                      phase2_shares={ids[0]: 1, ids[2]: 1})
    adapters = []
    for checkpointing in (False, True):
        where = tmp_path / f"ckpt{int(checkpointing)}"
        where.mkdir()
        job = make_job(where, "tiny-llama", "lm", count=10, epochs=2, batch_size=5, precision="fp16",
                       activation_checkpointing=checkpointing)
        metrics, _ = run_training(job, devices, None, where / "out", RunOptions(), log_line=lambda line: None,
                             plan=plan)
        assert metrics["phase2"] is not None
        adapters.append(load_file(str(where / "out" / "adapter.safetensors")))
    assert_trained_close(adapters[1], adapters[0], adam_movement_bound(LEARNING_RATE, len(metrics["steps"])))


def test_secure_job_that_does_not_fit_one_device(tmp_path, daemons, cluster):
    """Mutual TLS, real profiles and links from the daemons, the real planner: with every device's budget
    below what the whole job needs on one device, the plan splits the model, and the job trains."""
    import asyncio
    import dataclasses

    from pac.cluster.measure import measure_home
    from pac.planner.errors import InfeasibleError
    from pac.planner.planner import plan_job
    from pac.planner.profile import home_from_dict

    running = [daemons.start(secure=True) for _ in range(3)]
    devices = devices_of(running)
    job = make_job(tmp_path, "tiny-llama", "lm", count=12, epochs=2, batch_size=4)
    document = asyncio.run(measure_home(devices, cluster.identity, job, [1, 2, 4], lambda line: None))
    samples = job.to_training_job(12)  # the job as the planner sees it (its weight bits, sequence length)
    whole = plan_job(home_from_dict(document), samples, "single-device").plan
    budget = max(use.phase1_peak_bytes for use in whole.usage)
    overhead = max(d.get("runtime_overhead_bytes", 0) for d in document["devices"])  # the daemon's own
    for _ in range(40):  # shrink every budget until the job no longer fits one device (smaller micro-batches
        budget = overhead + int((budget - overhead) * 0.85)  # and fewer in flight let it fit for a while)
        for device in document["devices"]:
            device["memory_budget_bytes"] = budget
        home = home_from_dict(document)
        try:
            plan_job(home, samples, "single-device")
        except InfeasibleError:
            break
    with pytest.raises(InfeasibleError):
        plan_job(home, samples, "single-device")
    plan = plan_job(home, samples, "pac").plan
    assert len(plan.phase1.stages) >= 2
    assert all(use.phase1_peak_bytes <= use.memory_budget_bytes for use in plan.usage)
    plan = dataclasses.replace(plan, model="tiny-llama")
    metrics, _ = run_training(job, devices, cluster.identity, tmp_path / "out", RunOptions(),
                         log_line=lambda line: None, plan=plan)
    assert len(metrics["steps"]) == 6 and metrics["steps"][-1]["loss"] < metrics["steps"][0]["loss"]
    assert metrics["plan"]["stages"] == [[s.first_layer, s.end_layer, list(s.devices), list(s.shares)]
                                         for s in plan.phase1.stages]


def write_job_file(tmp_path: Path, addresses: list[str], count: int, epochs: int, deploy: str = "") -> Path:
    data = write_data(tmp_path / "data.jsonl", "classification", count)
    path = tmp_path / "job.toml"
    path.write_text(f"""version = 1
[model]
name_or_path = "tiny-bert"
[data]
train = "{data}"
task = "classification"
[training]
epochs = {epochs}
batch_size = 4
seq_len = 32
top_layers = 0
[cache]
precision = "fp16"
directory = "{tmp_path / 'cache'}"
[devices]
mode = "list"
addresses = {json.dumps(addresses)}
insecure = true
[output]
directory = "{tmp_path / 'out'}"
""" + (f'deploy = "{deploy}"\n' if deploy else ""))
    return path


def start_train(tmp_path: Path, job: Path, *extra: str):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PAC_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "pacctl", "train", str(job), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float, what: str, process=None) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"pacctl train ended before {what}:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_ctrl_c_releases_every_device_and_keeps_the_checkpoint(tmp_path, four):
    import signal

    job = write_job_file(tmp_path, [d.address for d in four[:3]], count=64, epochs=400)
    process = start_train(tmp_path, job)
    out = tmp_path / "out"
    status = out / "status.json"
    wait_for(lambda: status.exists() and json.loads(status.read_text()).get("checkpoint_epoch", 0) >= 2, 120,
             "the second checkpoint", process)
    shown = __import__("subprocess").run([__import__("sys").executable, "-m", "pacctl", "status", "--out", str(out)],
                                         capture_output=True, text=True, timeout=60)
    assert "running" in shown.stdout and "phase 2" in shown.stdout, shown.stdout + shown.stderr
    assert re.search(r"epoch \d+/400, step \d+/16 \(\d+ of 6400 in all\)", shown.stdout), shown.stdout  # as progress
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert "stopped: every device released the job; the last checkpoint is" in output and "--resume" in output
    assert any((out / "checkpoint").glob("step-*/adapter.safetensors"))
    assert device_jobs(four) == ["", "", "", ""]
    assert json.loads(status.read_text())["state"] == "stopped"


def test_with_no_deadline_a_device_that_dies_fails_the_job_with_its_address(tmp_path):
    import time

    running = start_daemons(tmp_path, 3, "k")
    try:
        job = write_job_file(tmp_path, [d.address for d in running], count=64, epochs=400)
        process = start_train(tmp_path, job, "--strategy", "data-only", "--no-cache", "--timeout", "5",
                              "--deadline", "0")  # no going on without it (tests/integration/test_faults.py)
        status = tmp_path / "out" / "status.json"
        wait_for(lambda: status.exists() and json.loads(status.read_text()).get("step", 0) >= 3, 120, "steps",
                 process)
        running[1].kill()
        started = time.monotonic()
        output, _ = process.communicate(timeout=90)
        assert process.returncode == 1, output
        assert time.monotonic() - started < 60
        assert "failed" in output and "127.0.0.1:" in output, output
    finally:
        for daemon in running:
            daemon.kill()


def test_devices_release_the_job_of_a_controller_that_vanished(tmp_path):
    """pacctl train killed outright (no Ctrl-C, no Release): every device lets the job go once its lease
    runs out, and is free for the next job."""
    import signal
    import time

    running = start_daemons(tmp_path, 2, "v")
    try:
        job = write_job_file(tmp_path, [d.address for d in running], count=64, epochs=400)
        process = start_train(tmp_path, job, "--lease", "2")
        status = tmp_path / "out" / "status.json"
        wait_for(lambda: status.exists() and json.loads(status.read_text()).get("step", 0) >= 20, 120, "steps",
                 process)
        holding = device_jobs(running)
        assert any(holding), "the plan's devices hold the job while it runs"
        time.sleep(3)  # longer than a lease: the renewals keep it
        assert device_jobs(running) == holding and process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        killed = time.monotonic()
        wait_for(lambda: device_jobs(running) == ["", ""], 30, "the devices to release the job")
        assert time.monotonic() - killed < 2 + 10  # the lease, the watcher's poll and a step in flight
    finally:
        for daemon in running:
            daemon.kill()


def test_renew_answers_for_the_job_it_names(four):
    import asyncio

    import grpc

    from pac.v1 import stage_pb2, stage_pb2_grpc

    async def ask(lease_s):
        async with grpc.aio.insecure_channel(four[0].address) as channel:
            return await stage_pb2_grpc.StageStub(channel).Renew(
                stage_pb2.RenewRequest(job_id="no-such-job", lease_s=lease_s), timeout=5)

    assert asyncio.run(ask(5.0)).held is False
    with pytest.raises(grpc.aio.AioRpcError) as error:
        asyncio.run(ask(0.0))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lease_s" in error.value.details()


def test_same_job_on_the_same_plan_is_bit_identical(tmp_path, four):
    """Given the plan, a job is deterministic: two runs give the same losses and the same adapter, bit for
    bit (runs planned from fresh measurements may differ, because their plans may)."""
    ids = [d.node_id for d in devices_of(four)]
    adapters, losses = [], []
    for run in range(2):
        out = tmp_path / f"run{run}"
        out.mkdir()
        job = make_job(out, "tiny-llama", "classification", count=14, epochs=2, batch_size=6)
        plan = fixed_plan("tiny-llama", TrainingJob(samples=14, batch_size=6, epochs=2),
                          [(0, 2, [ids[0], ids[1]], [2, 1]), (2, 3, [ids[2], ids[3]], [2, 1])], micro_batches=2,
                          phase2_shares={ids[0]: 5, ids[1]: 4, ids[2]: 5})
        metrics, _ = run_training(job, devices_of(four), None, out / "out", RunOptions(), log_line=lambda line: None,
                             plan=plan)
        losses.append([s["loss"] for s in metrics["steps"]])
        adapters.append(load_file(str(out / "out" / "adapter.safetensors")))
    assert losses[0] == losses[1]
    assert adapters[0].keys() == adapters[1].keys()
    for key in adapters[0]:
        assert torch.equal(adapters[0][key], adapters[1][key]), key


def test_pacctl_train_deploys_the_adapter_where_the_job_says(tmp_path, four):
    import asyncio

    from pac.net.assistant_client import AssistantClient

    away = "127.0.0.1:9"  # a listed device that is not there (the phone is out): the job starts without it
    job = write_job_file(tmp_path, [d.address for d in four[:2]] + [away], count=16, epochs=2,
                         deploy=four[1].address)
    process = start_train(tmp_path, job)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert f"devices.addresses ['{away}'] did not answer" in output and "takes them in when they answer" in output
    assert f"to {four[1].node_id}" in output and "(out: classification on tiny-bert)" in output

    async def served():
        async with AssistantClient(four[1].address, None) as client:
            return await client.list_models()

    (model,) = asyncio.run(served())
    assert (model.name, model.task, model.backbone) == ("out", "classification", "tiny-bert")


@pytest.mark.parametrize(("stages", "use_cache", "precision"), [(1, None, "fp32"), (2, None, "fp32"), (2, False, "fp16")])
def test_the_evaluation_data_is_scored_after_every_epoch_and_plotted(tmp_path, four, stages, use_cache, precision):
    """Epoch 1 (phase 1) and each phase-2 epoch end with a score of the evaluation data and of the
    validation split, recorded in metrics.json and status.json and drawn on the loss plot; the adapter is
    the best validation epoch's, its evaluation the job's final score, and a fresh evaluation of the saved
    adapter gives that score (the later ones come from the controller's cache of the data's states, which
    the stages computed with several mini-batches in flight, at its precision also where the job trains
    without a cache)."""
    from pac.adapter import load_adapter
    from pac.cluster.prepare import prepare
    from pac.train.loop import evaluate

    ids = [d.node_id for d in devices_of(four)]
    job = make_job(tmp_path, "tiny-bert", "classification", count=16, epochs=3, batch_size=4, eval_count=10,
                   validation=4, precision=precision)
    prepared = prepare(job, lambda line: None, whole=True)
    assert len(prepared.train_items) == 12 and len(prepared.validation_items) == 4
    layout = [(0, 3, [ids[0]], [1])] if stages == 1 else [(0, 2, [ids[0], ids[2]], [1, 1]), (2, 3, [ids[1]], [1])]
    plan = fixed_plan("tiny-bert", TrainingJob(samples=12, batch_size=4, epochs=3), layout, micro_batches=1,
                      phase2_shares={ids[0]: 2, ids[1]: 2})
    out = tmp_path / "out"
    metrics, _ = run_training(job, devices_of(four), None, out, RunOptions(use_cache=use_cache),
                              log_line=lambda line: None, plan=plan)
    evaluations = metrics["evaluations"]
    assert [(e["epoch"], e["step"]) for e in evaluations] == [(1, 3), (2, 6), (3, 9)]
    assert all("eval" in e and "validation" in e for e in evaluations)
    best = metrics["best_epoch"]
    assert best == max(evaluations, key=lambda e: (e["validation"]["accuracy"], -e["epoch"]))["epoch"]
    assert metrics["eval"] == evaluations[best - 1]["eval"] and not metrics["stopped_early"]
    assert json.loads((out / "status.json").read_text())["evaluations"] == evaluations
    assert not (out / ".evaluation-cache").exists() and not (out / "best.safetensors").exists()
    fresh = load_adapter(out / "adapter.safetensors", prepared.backbone)
    assert evaluate(fresh, prepared.eval_items, "classification", prepared.pad_id) == metrics["eval"]
    assert (out / "loss.png").stat().st_size > 0


@pytest.mark.parametrize("model,training,layout", [
    # the side network: every stage trains, its side forward waits for the frozen layers run ahead
    ("tiny-llama", {}, [(0, 2, [0, 1], [2, 1]), (2, 3, [2, 3], [2, 1])]),
    # tuned top layers and no side network (the default technique's shape): the first stages train nothing
    ("tiny-bert", {"top_layers": 1, "side_layers": []}, [(0, 1, [0], [1]), (1, 2, [1], [1]), (2, 3, [2, 3], [1, 1])]),
    # one stage of three replicas: each steps inside its RunStep; the next mini-batch's forward overlaps
    # the AllReduce
    ("tiny-bert", {"top_layers": 1}, [(0, 3, [0, 1, 2], [1, 1, 1])]),
])
def test_run_ahead_is_bit_identical_to_lock_step(tmp_path, four, model, training, layout):
    """The frozen layers run up to two mini-batches ahead of the one training, on the same plan: the same
    losses, the same adapter and the same cache (phase 2 trains from it), bit for bit."""
    ids = [d.node_id for d in devices_of(four)]
    stages = [(first, end, [ids[i] for i in who], shares) for first, end, who, shares in layout]
    adapters, losses = [], []
    for run_ahead in (0, 2):
        out = tmp_path / f"ahead{run_ahead}"
        out.mkdir()
        job = make_job(out, model, "classification", count=22, epochs=2, batch_size=6, **training)
        plan = fixed_plan(model, TrainingJob(samples=22, batch_size=6, epochs=2), stages, micro_batches=3,
                          phase2_shares={ids[0]: 2, ids[1]: 3, ids[3]: 1}, run_ahead=run_ahead)
        metrics, controller = run_training(job, devices_of(four), None, out / "out", RunOptions(),
                                           log_line=lambda line: None, plan=plan)
        losses.append([s["loss"] for s in metrics["steps"]])
        adapters.append(load_file(str(out / "out" / "adapter.safetensors")))
        ops = {e["op"] for e in controller.record.history.events}  # the timeline of the third step
        assert ("A" in ops) == bool(run_ahead), ops
    assert len(losses[0]) == 8 and losses[0] == losses[1]
    assert adapters[0].keys() == adapters[1].keys()
    for key in adapters[0]:
        assert torch.equal(adapters[0][key], adapters[1][key]), key
