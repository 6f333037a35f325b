"""`pacctl train` end to end on real daemons on loopback: both phases, every family, equivalence.

The equivalence tests run 2 stages x 2 replicas on four daemons and compare the adapter with
single-process training (pac.train.loop.train) on the same seed, data and mini-batch order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import start_daemon
from safetensors.torch import load_file

from pac.cluster.controller import Device, RunOptions, fixed_plan, phase2_order, run_job
from pac.jobfile import parse_job
from pac.planner.job import TrainingJob
from pac.train.loop import TrainConfig, batches, train


@pytest.fixture
def insecure_daemons(tmp_path):
    running = []

    def start(count: int) -> list:
        for _ in range(count):
            running.append(start_daemon(tmp_path, secure=False, name=f"n{len(running)}"))
        return running[-count:]

    yield start
    for daemon in running:
        daemon.kill()


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
             precision: str = "fp32", **training):
    data = write_data(tmp_path / f"{task}.jsonl", task, count)
    mapping = {
        "model": {"name_or_path": model},
        "data": {"train": str(data), "task": task},
        "training": {"epochs": epochs, "batch_size": batch_size, "seq_len": 32, "learning_rate": 1e-2,
                     "seed": 3, **training},
        "cache": {"precision": precision, "directory": str(tmp_path / "cache")},
        "devices": {"mode": "list", "addresses": ["127.0.0.1:1"], "insecure": True},
        "output": {"directory": str(tmp_path / "out")},
    }
    return parse_job(mapping, source=str(tmp_path / "job.toml"))


def devices_of(daemons) -> list[Device]:
    return [Device(d.node_id, d.address, "localhost") for d in daemons]


def single_process(job, metrics_order) -> tuple[dict, list[float]]:
    """Train the same job in one process: same initialisation (pac.cluster.controller.prepare), seed and order."""
    from pac.cluster.controller import prepare

    prepared = prepare(job, lambda line: None)
    training = job.training
    config = TrainConfig(epochs=training.epochs, batch_size=training.batch_size,
                         learning_rate=training.learning_rate, seed=training.seed)
    result = train(prepared.model, prepared.train_items, prepared.task, prepared.pad_id, config,
                   batch_order=metrics_order(prepared))
    state = {k: v for k, v in prepared.model.state_dict().items() if k.startswith(("side.", "head."))}
    return state, result.losses


def assert_same(expected: dict, path: Path, atol=2e-5) -> None:
    got = {k: v for k, v in load_file(str(path)).items()}
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=atol, rtol=1e-4, msg=key)


@pytest.mark.parametrize("model,task", [("tiny-bert", "classification"), ("tiny-llama", "lm")])
def test_two_stages_two_replicas_equal_single_process(tmp_path, insecure_daemons, model, task):
    daemons = insecure_daemons(4)
    devices = devices_of(daemons)
    ids = [d.node_id for d in devices]
    job = make_job(tmp_path, model, task, count=14, epochs=2, batch_size=6)
    plan = fixed_plan(model, TrainingJob(samples=14, batch_size=6, epochs=2), [
        (0, 2, ids[:2], [1, 1]), (2, 3, ids[2:], [2, 1])], micro_batches=2,
        phase2_shares={ids[0]: 1, ids[1]: 2, ids[2]: 2, ids[3]: 1})
    out = tmp_path / "out"
    metrics, controller = run_job(job, devices, None, out, RunOptions(), log_line=lambda line: None, plan=plan)

    # phase 1 (epoch 1) against the checkpoint is covered by the final state: order = phase 1 then phase 2
    def order(prepared):
        items = dict(zip(prepared.keys, prepared.train_items, strict=True))
        first = batches(prepared.train_items, 6, torch.Generator().manual_seed(3))
        later = phase2_order(items, controller.assigned_by_node, controller.step_counts_by_node, 3, range(1, 2))
        return lambda epoch: first if epoch == 0 else later[epoch]

    expected, losses = single_process(job, order)
    got_losses = [s["loss"] for s in metrics["steps"]]
    assert got_losses == pytest.approx(losses, rel=1e-4, abs=1e-5)
    assert_same(expected, out / "adapter.safetensors")
    assert metrics["phase2"]["moved_bytes"] > 0  # states of other stages had to move
    assert (out / "loss.png").stat().st_size > 1000 and (out / "timeline.png").stat().st_size > 1000
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert not any((tmp_path / "cache").rglob("records.bin"))  # removed: the job does not keep its cache
