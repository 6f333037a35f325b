"""A device that dies or stalls during a job: the controller notices, says which and why, plans again over
the devices that remain and finishes the job; nothing is left behind on the survivors.

Four insecure daemons on loopback per test (one of them is killed or stopped); the job starts on a plan given
by hand (two stages, phase 2 on three devices), and the re-plan is the real planner's on measured profiles.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import device_jobs, start_daemons

from pac.cluster.context import Device, RunOptions
from pac.cluster.controller import run_training
from pac.cluster.measure import fixed_plan
from pac.cluster.record import JobRecord
from pac.jobfile import parse_job
from pac.planner.workload import TrainingJob

COUNT, BATCH, EPOCHS, DEADLINE = 14, 4, 3, 3.0  # 4 steps per epoch, 12 in all


@pytest.fixture
def four(tmp_path):
    running = start_daemons(tmp_path, 4, "f")
    yield running
    for daemon in running:
        try:
            os.kill(daemon.process.pid, signal.SIGCONT)
        except OSError:
            pass
        daemon.kill()


def job_in(where):
    rows = [{"text": ("good " if i % 2 else "bad ") * (1 + i % 3) + f"item{i}", "label": i % 2} for i in range(COUNT)]
    (where / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return parse_job({
        "model": {"name_or_path": "tiny-bert"}, "data": {"train": str(where / "data.jsonl"), "task": "classification"},
        "training": {"epochs": EPOCHS, "batch_size": BATCH, "seq_len": 32, "learning_rate": 1e-2, "seed": 5,
                     "checkpoint_steps": 2},
        "cache": {"precision": "fp16", "directory": str(where / "cache")},
        "devices": {"mode": "list", "addresses": ["127.0.0.1:1"], "insecure": True},
        "output": {"directory": str(where / "out")},
    }, source=str(where / "job.toml"))


def run_with_fault(tmp_path, four, monkeypatch, after_step: int, victim: int, sig: int) -> tuple[dict, float]:
    """The job, with daemon `victim` sent `sig` once `after_step` steps are recorded; (metrics, when)."""
    devices = [Device(d.node_id, d.address, "localhost") for d in four]
    ids = [d.node_id for d in devices]
    plan = fixed_plan("tiny-bert", TrainingJob(samples=COUNT, batch_size=BATCH, epochs=EPOCHS),
                      [(0, 2, ids[:2], [1, 1]), (2, 3, ids[2:3], [1])], micro_batches=2,
                      phase2_shares={ids[0]: 1, ids[1]: 2, ids[3]: 1})
    original, sent = JobRecord.step, []

    def step(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if len(self.history.steps) == after_step and not sent:
            os.kill(four[victim].process.pid, sig)
            sent.append(time.time())

    monkeypatch.setattr(JobRecord, "step", step)
    said = []
    metrics, _ = run_training(job_in(tmp_path), devices, None, tmp_path / "out",
                              RunOptions(deadline_s=DEADLINE, profile_batch_sizes=(4,)), log_line=said.append,
                              plan=plan)
    assert sent, "the fault was never sent"
    assert any(four[victim].node_id in line and "going on without it" in line for line in said), said
    return metrics, sent[0]


def assert_completed(metrics: dict, tmp_path, four, victim: int) -> dict:
    assert len(metrics["steps"]) == 3 * 4 and [s["step"] for s in metrics["steps"]] == list(range(1, 13))
    assert len(metrics["faults"]) == 1
    fault = metrics["faults"][0]
    assert fault["device"] == four[victim].node_id and fault["recovered_s"] is not None
    assert all(d["node_id"] != four[victim].node_id for d in metrics["devices"])
    assert (tmp_path / "out" / "adapter.safetensors").exists() and not (tmp_path / "out" / "checkpoint").exists()
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["state"] == "finished" and status["faults"][0]["device"] == four[victim].node_id
    survivors = [d for i, d in enumerate(four) if i != victim]
    assert device_jobs(survivors) == [""] * 3  # every survivor let every run of the job go
    left = {path.relative_to(tmp_path / "cache").parts[0] for path in (tmp_path / "cache").rglob("records.bin")}
    assert len(left) <= 1, left  # each daemon caches under its own directory: only the lost one's may stay
    return fault


def test_a_device_killed_in_phase_1_the_job_finishes_on_the_others(tmp_path, four, monkeypatch):
    metrics, _ = run_with_fault(tmp_path, four, monkeypatch, after_step=3, victim=1, sig=signal.SIGKILL)
    fault = assert_completed(metrics, tmp_path, four, victim=1)
    assert fault["phase"] == 1 and fault["resumed_from_step"] == 2 and fault["steps_redone"] == 1  # since the commit


def test_a_device_killed_in_phase_2_redoes_at_most_one_step(tmp_path, four, monkeypatch):
    metrics, _ = run_with_fault(tmp_path, four, monkeypatch, after_step=6, victim=3, sig=signal.SIGKILL)
    fault = assert_completed(metrics, tmp_path, four, victim=3)
    assert fault["phase"] == 2 and fault["steps_redone"] <= 1


def test_a_stalled_device_is_noticed_within_the_deadline_and_taken_back_when_it_answers(tmp_path, four, monkeypatch):
    """SIGSTOPped early in phase 2: noticed within the deadline; woken once the controller has gone on
    without it: at the end of that epoch the controller takes it back (a new plan over all four) and
    finishes; it holds nothing after."""
    original = JobRecord.add_fault

    def add_fault(self, fault, noticed):
        original(self, fault, noticed)
        os.kill(four[0].process.pid, signal.SIGCONT)  # it wakes up while the others go on

    monkeypatch.setattr(JobRecord, "add_fault", add_fault)
    metrics, stopped = run_with_fault(tmp_path, four, monkeypatch, after_step=5, victim=0, sig=signal.SIGSTOP)
    assert [s["step"] for s in metrics["steps"]] == list(range(1, 13))
    fault = metrics["faults"][0]
    assert fault["device"] == four[0].node_id and "no answer within" in fault["why"]
    assert fault["noticed_unix"] - stopped < DEADLINE * 1.25 + 2.0  # a round of the watch, then the deadline
    assert [(j["device"], j["step"]) for j in metrics["joins"]] == [(four[0].node_id, 8)]  # epoch 2's end
    assert any(d["node_id"] == four[0].node_id for d in metrics["devices"])
    assert device_jobs(four) == [""] * 4
