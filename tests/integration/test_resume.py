"""A stopped job resumes from its checkpoint and ends with the adapter of the job that never stopped.

Four insecure daemons on loopback; a fixed plan (two stages, phase 2 on three devices); the job is stopped
after a given step (as Ctrl-C stops it: the devices release it and keep their caches), then run again with
`resume`; the adapter must equal the uninterrupted job's bit for bit, and so must every step's loss.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from pac.cluster.context import Device, RunOptions
from pac.cluster.controller import run_training
from pac.cluster.measure import fixed_plan
from pac.cluster.record import JobRecord
from pac.errors import ConfigError
from pac.jobfile import parse_job
from pac.jobfile.parse import job_toml
from pac.planner.workload import TrainingJob

COUNT, BATCH, EPOCHS = 14, 4, 3  # 4 steps per epoch (the last short), 12 in all


def job_in(where, model="tiny-bert", task="classification", **training):
    rows = [{"text": ("good " if i % 2 else "bad ") * (1 + i % 3) + f"item{i}", "label": i % 2} if task != "lm"
            else {"prompt": f"what is {i}?", "answer": f"it is {i * 7}"} for i in range(COUNT)]
    data = where / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return parse_job({
        "model": {"name_or_path": model}, "data": {"train": str(data), "task": task},
        "training": {"epochs": EPOCHS, "batch_size": BATCH, "seq_len": 32, "learning_rate": 1e-2, "seed": 5,
                     "checkpoint_steps": 2, "top_layers": 0, **training},
        "cache": {"precision": "fp16", "directory": str(where / "cache")},
        "devices": {"mode": "list", "addresses": ["127.0.0.1:1"], "insecure": True},
        "output": {"directory": str(where / "out")},
    }, source=str(where / "job.toml"))


def plan_for(model, devices):
    ids = [d.node_id for d in devices]
    return fixed_plan(model, TrainingJob(samples=COUNT, batch_size=BATCH, epochs=EPOCHS),
                      [(0, 2, ids[:2], [1, 1]), (2, 3, ids[2:3], [1])], micro_batches=2,
                      phase2_shares={ids[0]: 1, ids[1]: 2, ids[3]: 1})


def stop_after(monkeypatch, steps: int) -> None:
    """Stop the job (as Ctrl-C does) once `steps` steps are recorded."""
    original = JobRecord.step

    def step(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if len(self.history.steps) == steps:
            raise KeyboardInterrupt

    monkeypatch.setattr(JobRecord, "step", step)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, four):
    where = tmp_path_factory.mktemp("whole")
    devices = [Device(d.node_id, d.address, "localhost") for d in four]
    metrics, _ = run_training(job_in(where), devices, None, where / "out", RunOptions(), log_line=lambda line: None,
                              plan=plan_for("tiny-bert", devices))
    return load_file(str(where / "out" / "adapter.safetensors")), [s["loss"] for s in metrics["steps"]]


def test_two_jobs_one_process_starts_within_a_second_have_distinct_ids(tmp_path, monkeypatch):
    # a resume right after a stop: the daemons remember the stopped job's finished ring operations by job id
    from pac.cluster import controller
    monkeypatch.setattr(controller.time, "time", lambda: 1_800_000_000.0)
    job, devices = job_in(tmp_path), [Device("n0", "127.0.0.1:1", "localhost")]
    first, second = (controller.Controller(job, devices, None, tmp_path / "out") for _ in range(2))
    assert first.job_id != second.job_id


@pytest.mark.parametrize("stop_at,resumed_from", [
    (3, 2),    # within phase 1 (a checkpoint every 2 steps)
    (5, 4),    # between the phases: phase 1's last checkpoint, phase 2 gathers from the kept shards
])  # within phase 2 (the members' kept caches): test_a_killed_controller_resumes_with_pacctl_train_resume
def test_a_stopped_job_resumes_to_the_same_adapter(tmp_path, four, uninterrupted, monkeypatch, stop_at,
                                                   resumed_from):
    expected, expected_losses = uninterrupted
    devices = [Device(d.node_id, d.address, "localhost") for d in four]
    job, plan, out = job_in(tmp_path), plan_for("tiny-bert", devices), tmp_path / "out"
    with monkeypatch.context() as patch:
        stop_after(patch, stop_at)
        with pytest.raises(KeyboardInterrupt):
            run_training(job, devices, None, out, RunOptions(), log_line=lambda line: None, plan=plan)
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"
    assert sorted(p.name for p in (out / "checkpoint").glob("step-*"))[-1] == f"step-{resumed_from:08d}"
    with pytest.raises(ConfigError, match="--resume"):  # a new job never mixes with the stopped one's checkpoint
        run_training(job, devices, None, out, RunOptions(), log_line=lambda line: None, plan=plan)
    said = []
    metrics, _ = run_training(job, devices, None, out, RunOptions(resume=True), log_line=said.append, plan=plan)
    assert any(f"step-{resumed_from:08d}" in line for line in said), said
    got = load_file(str(out / "adapter.safetensors"))
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected), [k for k in expected if not torch.equal(got[k], expected[k])]
    assert [s["loss"] for s in metrics["steps"]] == expected_losses  # the stopped run's steps, then the resumed
    assert not (out / "checkpoint").exists()  # superseded by the adapter
    assert not any((tmp_path / "cache").rglob("records.bin"))  # the finished job's caches are gone


def test_a_changed_job_is_refused_naming_the_key(tmp_path, four, monkeypatch):
    devices = [Device(d.node_id, d.address, "localhost") for d in four]
    plan, out = plan_for("tiny-bert", devices), tmp_path / "out"
    with monkeypatch.context() as patch:
        stop_after(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            run_training(job_in(tmp_path), devices, None, out, RunOptions(), log_line=lambda line: None, plan=plan)
    with pytest.raises(ConfigError, match=r"training.learning_rate \(0.01 -> 0.02\)"):
        run_training(job_in(tmp_path, learning_rate=2e-2), devices, None, out, RunOptions(resume=True),
                     log_line=lambda line: None, plan=plan)
    job = job_in(tmp_path)
    (tmp_path / "data.jsonl").write_text((tmp_path / "data.jsonl").read_text().replace("item1", "item-one"))
    with pytest.raises(ConfigError, match=r"data.train \(content"):
        run_training(job, devices, None, out, RunOptions(resume=True), log_line=lambda line: None, plan=plan)


def test_a_killed_controller_resumes_with_pacctl_train_resume(tmp_path, four, uninterrupted):
    """`pacctl train` SIGKILLed in phase 2 (no Release: the devices still hold the run) and run again with
    --resume: the devices let the killed run go, and the job ends with the uninterrupted job's adapter."""
    devices = [Device(d.node_id, d.address, "localhost") for d in four]
    job_in(tmp_path)  # writes the data
    plan_for("tiny-bert", devices).save(tmp_path / "plan.json")
    (tmp_path / "job.toml").write_text(job_toml({
        "model": {"name_or_path": "tiny-bert"}, "data": {"train": str(tmp_path / "data.jsonl"), "task": "classification"},
        "training": {"epochs": EPOCHS, "batch_size": BATCH, "seq_len": 32, "learning_rate": 1e-2, "seed": 5,
                     "checkpoint_steps": 2, "top_layers": 0},
        "cache": {"precision": "fp16", "directory": str(tmp_path / "cache")},
        "devices": {"mode": "list", "addresses": [d.address for d in four], "insecure": True},
        "output": {"directory": str(tmp_path / "out")}}))
    env = {**os.environ, "PAC_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pacctl", "train", str(tmp_path / "job.toml"), "--plan", str(tmp_path / "plan.json")]
    status = tmp_path / "out" / "status.json"
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 120
        while not (status.exists() and json.loads(status.read_text()).get("checkpoint_step", 0) >= 6):
            assert process.poll() is None and time.monotonic() < deadline, "no phase-2 checkpoint"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    resumes = json.loads((tmp_path / "out" / "metrics.json").read_text())["resumes"]
    assert len(resumes) == 1 and resumes[0]["stopped_state"] == "running"
    assert resumes[0]["stopped_at_step"] >= resumes[0]["step"] >= 6
    assert resumes[0]["steps_redone"] == resumes[0]["stopped_at_step"] - resumes[0]["step"] < 2 + 2
    shown = subprocess.run([sys.executable, "-m", "pacctl", "status", "--out", str(tmp_path / "out")], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60)
    assert "resumed from step-" in shown.stdout and "redone" in shown.stdout, shown.stdout
    expected, _ = uninterrupted
    got = load_file(str(tmp_path / "out" / "adapter.safetensors"))
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_tuned_top_layers_resume_within_phase_2_to_the_same_adapter(tmp_path, four, monkeypatch):
    """`training.top_layers = 1`: a job stopped in phase 2 resumes with the tuned layer's LoRA factors and
    their AdamW state from the checkpoint, to the uninterrupted job's adapter bit for bit."""
    devices = [Device(d.node_id, d.address, "localhost") for d in four]
    plan = plan_for("tiny-bert", devices)
    whole = tmp_path / "whole"
    whole.mkdir()
    run_training(job_in(whole, top_layers=1), devices, None, whole / "out", RunOptions(), log_line=lambda line: None,
                 plan=plan)
    expected = load_file(str(whole / "out" / "adapter.safetensors"))
    assert any(k.startswith("top.") and "lora_B" in k for k in expected)
    job, out = job_in(tmp_path, top_layers=1), tmp_path / "out"
    with monkeypatch.context() as patch:
        stop_after(patch, 7)
        with pytest.raises(KeyboardInterrupt):
            run_training(job, devices, None, out, RunOptions(), log_line=lambda line: None, plan=plan)
    run_training(job, devices, None, out, RunOptions(resume=True), log_line=lambda line: None, plan=plan)
    got = load_file(str(out / "adapter.safetensors"))
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected), [k for k in expected if not torch.equal(got[k], expected[k])]
