"""Checkpoints: written whole or not at all, a damaged one passed over for the one before, another job refused."""

from __future__ import annotations

import json

import pytest
import torch

from pac.cluster.checkpoint import (
    KEEP,
    Checkpoint,
    Position,
    job_identity,
    latest_checkpoint,
    write_checkpoint,
)
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.jobfile import parse_job
from pac.models.backbone import load_backbone
from pac.techniques.build import TechniqueConfig, build_model


@pytest.fixture(scope="module")
def model():
    built = build_model(load_backbone("tiny-bert", seed=0), TechniqueConfig("parallel"), HeadConfig("classification"))
    built.initial = {k: v.clone() for k, v in built.state_dict().items() if k.startswith(("side.", "head."))}
    return built


def state_of(model, scale: float) -> dict[str, torch.Tensor]:
    state = {k: v * scale for k, v in model.initial.items()}
    state.update({f"opt.{k}.exp_avg": torch.full_like(v, scale) for k, v in state.items() if v.is_floating_point()})
    return state


def write(root, model, step: int, scale: float, identity=None):
    return write_checkpoint(root, model, "classification", state_of(model, scale), Position(1, 0, step, step), "job-1",
                            identity or {"training.seed": "0"}, holders={"k": ["node-a"]})


def test_the_newest_checkpoint_is_read_back_exactly_and_only_the_newest_kept(tmp_path, model):
    for step in range(1, 5):
        write(tmp_path, model, step, float(step))
    assert len(list(tmp_path.glob("step-*"))) == KEEP
    found, problems = latest_checkpoint(tmp_path)
    assert problems == [] and found.position == Position(1, 0, 4, 4) and found.holders == {"k": ["node-a"]}
    expected = state_of(model, 4.0)
    got = found.tensors()
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_checkpoint_cut_short_is_passed_over_for_the_one_before(tmp_path, model):
    write(tmp_path, model, 2, 2.0)
    newest = write(tmp_path, model, 4, 4.0)
    data = (newest / "optimizer.safetensors").read_bytes()
    (newest / "optimizer.safetensors").write_bytes(data[: len(data) // 2])  # as a crash mid-write would
    found, problems = latest_checkpoint(tmp_path)
    assert found.position.step == 2
    assert len(problems) == 1 and "optimizer.safetensors has" in problems[0] and "step-00000004" in problems[0]
    (newest / "optimizer.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit off
    found, problems = latest_checkpoint(tmp_path)
    assert found.position.step == 2 and "SHA-256" in problems[0]


def test_a_half_written_checkpoint_directory_is_never_read(tmp_path, model):
    write(tmp_path, model, 2, 2.0)
    partial = tmp_path / ".partial-step-00000004-123"  # what a crash before the rename leaves
    partial.mkdir()
    (partial / "checkpoint.json").write_text("{")
    assert latest_checkpoint(tmp_path)[0].position.step == 2
    (tmp_path / "step-00000006").mkdir()  # a directory without its files
    found, problems = latest_checkpoint(tmp_path)
    assert found.position.step == 2 and "checkpoint.json unreadable" in problems[0]


def job_at(tmp_path, **training):
    data = tmp_path / "data.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(4)))
    return parse_job({"model": {"name_or_path": "tiny-bert"}, "data": {"train": str(data)},
                      "training": training, "output": {"directory": str(tmp_path / "out")}}, source="job.toml")


def test_resuming_another_job_names_what_changed(tmp_path, model):
    saved = job_identity(job_at(tmp_path), "f" * 64)
    checkpoint = Checkpoint.read(write(tmp_path / "c", model, 2, 1.0, saved))
    checkpoint.check_job(job_identity(job_at(tmp_path, checkpoint_steps=7), "f" * 64), "job.toml")  # operational
    with pytest.raises(ConfigError) as error:
        checkpoint.check_job(job_identity(job_at(tmp_path, batch_size=8, seed=3), "e" * 64), "job.toml")
    said = str(error.value)
    assert "training.batch_size (16 -> 8)" in said and "training.seed (0 -> 3)" in said
    assert "model.fingerprint (content ffffffffffff -> content eeeeeeeeeeee)" in said
    (tmp_path / "data.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"data.train \(content [0-9a-f]{12} -> content [0-9a-f]{12}\)"):
        checkpoint.check_job(job_identity(job_at(tmp_path), "f" * 64), "job.toml")


def test_when_the_devices_left_cannot_hold_the_job_it_stops_with_the_checkpoint_kept(tmp_path, model):
    """A lost device whose survivors the planner finds too small: the job stops (TrainingFailed) naming the
    lost device and the planner's reason, with the commit written as a checkpoint to resume from."""
    import asyncio
    from types import SimpleNamespace

    from pac.cluster.checkpoint import Commit
    from pac.cluster.context import Device, RunOptions
    from pac.cluster.elastic import Elastic
    from pac.cluster.faults import DeviceLost
    from pac.cluster.record import JobRecord
    from pac.errors import TrainingFailed
    from pac.planner.synthetic import synthetic_home
    from pac.planner.workload import TrainingJob

    document = synthetic_home(12, 3, seed=0).to_dict()
    names = [d["name"] for d in document["devices"]]
    for device in document["devices"][1:]:
        device["memory_budget_bytes"] = 1 << 20  # the two that remain hold 1 MiB each
    controller = Elastic()
    controller.devices = [Device(n, f"127.0.0.1:{9000 + i}") for i, n in enumerate(names[1:])]
    controller.document, controller.options = document, RunOptions()
    controller.job = SimpleNamespace(to_training_job=lambda samples, cache, **tokens: TrainingJob(samples, 8, 3))
    controller.prepared = SimpleNamespace(train_items=[None] * 64, model=model, task="classification",
                                         tokens=dict)
    controller.record = JobRecord("job-1", tmp_path, controller.devices, 3, None, lambda line: None)
    controller.record.identity = {"model.name_or_path": "tiny-bert"}
    state = dict(model.initial)
    lost = DeviceLost(Device(names[0], "127.0.0.1:8999"), "no answer within 6 s")
    with pytest.raises(TrainingFailed) as raised:
        asyncio.run(controller._replan(lost, Commit(Position(1, 0, 5, 5), state), True))
    said = str(raised.value)
    assert f"without {names[0]} the devices that remain cannot hold the job" in said and "--resume" in said
    assert "add devices with at least" in said  # the planner says what would make it fit
    found, _ = latest_checkpoint(tmp_path / "checkpoint")
    assert found is not None and found.position == Position(1, 0, 5, 5)


def test_a_new_job_sets_the_outputs_of_the_one_before_aside(tmp_path):
    from pac.cluster.resume import set_aside_outputs

    out = tmp_path / "out"
    assert set_aside_outputs(out, {}) is None  # a fresh directory: nothing to move
    out.mkdir()
    for name in ("adapter.safetensors", "metrics.json", "loss.png", "status.json"):
        (out / name).write_text(name)
    moved = set_aside_outputs(out, {"job_id": "j1"})
    assert moved == out / "previous" / "j1"
    assert sorted(p.name for p in moved.iterdir()) == ["adapter.safetensors", "loss.png", "metrics.json"]
    assert not (out / "adapter.safetensors").exists() and (out / "status.json").exists()  # the new job rewrites it
    (out / "adapter.safetensors").write_text("again")
    assert set_aside_outputs(out, {"job_id": "j1"}) == out / "previous" / "j1-2"  # never overwrites
