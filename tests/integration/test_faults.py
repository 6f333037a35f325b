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


def job_in(where, replicas: int = 0):
    rows = [{"text": ("good " if i % 2 else "bad ") * (1 + i % 3) + f"item{i}", "label": i % 2} for i in range(COUNT)]
    (where / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return parse_job({
        "model": {"name_or_path": "tiny-bert"}, "data": {"train": str(where / "data.jsonl"), "task": "classification"},
        "training": {"epochs": EPOCHS, "batch_size": BATCH, "seq_len": 32, "learning_rate": 1e-2, "seed": 5,
                     "checkpoint_steps": 2, "top_layers": 0},
        "cache": {"precision": "fp16", "directory": str(where / "cache"), "replicas": replicas},
        "devices": {"mode": "list", "addresses": ["127.0.0.1:1"], "insecure": True},
        "output": {"directory": str(where / "out")},
    }, source=str(where / "job.toml"))


def run_with_fault(tmp_path, four, monkeypatch, after_step: int, victim: int, sig: int,
                   replicas: int = 0, run_ahead: int = 0, **options) -> tuple[dict, float]:
    """The job, with daemon `victim` sent `sig` once `after_step` steps are recorded; (metrics, when)."""
    devices = [Device(d.node_id, d.address, "localhost") for d in four]
    ids = [d.node_id for d in devices]
    plan = fixed_plan("tiny-bert", TrainingJob(samples=COUNT, batch_size=BATCH, epochs=EPOCHS),
                      [(0, 2, ids[:2], [1, 1]), (2, 3, ids[2:3], [1])], micro_batches=2,
                      phase2_shares={ids[0]: 1, ids[1]: 2, ids[3]: 1}, run_ahead=run_ahead)
    original, sent = JobRecord.step, []

    def step(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if len(self.history.steps) == after_step and not sent:
            os.kill(four[victim].process.pid, sig)
            sent.append(time.time())

    monkeypatch.setattr(JobRecord, "step", step)
    said = []
    metrics, _ = run_training(job_in(tmp_path, replicas), devices, None, tmp_path / "out",
                              RunOptions(deadline_s=DEADLINE, profile_batch_sizes=(4,), **options),
                              log_line=said.append,
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


@pytest.mark.parametrize("run_ahead", [0, 2])
def test_a_device_killed_in_phase_1_the_job_finishes_on_the_others(tmp_path, four, monkeypatch, run_ahead):
    """Lock-step, and with the frozen layers running two mini-batches ahead (the survivors' run-ahead is
    stopped with their stages and queued again on the re-planned job)."""
    metrics, _ = run_with_fault(tmp_path, four, monkeypatch, after_step=3, victim=1, sig=signal.SIGKILL,
                                run_ahead=run_ahead)
    fault = assert_completed(metrics, tmp_path, four, victim=1)
    assert fault["phase"] == 1 and fault["resumed_from_step"] == 2 and fault["steps_redone"] == 1  # since the commit


def test_a_device_killed_in_phase_2_redoes_at_most_one_step_and_its_share_is_read_from_a_copy(tmp_path, four,
                                                                                              monkeypatch):
    metrics, _ = run_with_fault(tmp_path, four, monkeypatch, after_step=6, victim=3, sig=signal.SIGKILL, replicas=1)
    fault = assert_completed(metrics, tmp_path, four, victim=3)
    assert fault["phase"] == 2 and fault["steps_redone"] <= 1
    first, after = metrics["phase2_runs"]
    assert first["replicas"] == 1 and first["replica_bytes"] > 0 and first["recomputed_samples"] == 0
    assert after["recomputed_samples"] == 0 and after["moved_bytes"] > 0  # the lost share, from its copy


def test_a_stalled_device_is_noticed_within_the_deadline_and_taken_back_when_it_answers(tmp_path, four, monkeypatch):
    """SIGSTOPped early in phase 2: noticed within the deadline; woken once the controller has gone on
    without it, while a device new to the job appears: at the end of that epoch the controller takes both
    in (a new plan over all five) and finishes; none holds anything after."""
    original, appeared = JobRecord.add_fault, []
    newcomer = start_daemons(tmp_path, 1, "new")[0]

    def add_fault(self, fault, noticed):
        original(self, fault, noticed)
        os.kill(four[0].process.pid, signal.SIGCONT)  # it wakes up while the others go on
        appeared.append(Device(newcomer.node_id, newcomer.address, "localhost"))  # the phone came home

    async def find_devices():
        return [Device(d.node_id, d.address, "localhost") for d in four] + appeared

    monkeypatch.setattr(JobRecord, "add_fault", add_fault)
    try:
        metrics, stopped = run_with_fault(tmp_path, four, monkeypatch, after_step=5, victim=0, sig=signal.SIGSTOP,
                                          find_devices=find_devices, scout_s=0.1)  # seen well before the epoch ends
        assert [s["step"] for s in metrics["steps"]] == list(range(1, 13))
        fault = metrics["faults"][0]
        assert fault["device"] == four[0].node_id and "no answer within" in fault["why"]
        assert fault["noticed_unix"] - stopped < DEADLINE * 1.25 + 2.0  # a round of the watch, then the deadline
        assert [(j["device"], j["step"], j["new"]) for j in metrics["joins"]] == \
            [(four[0].node_id, 8, False), (newcomer.node_id, 8, True)]  # at epoch 2's end
        first, without, back = metrics["phase2_runs"]
        assert without["recomputed_samples"] > 0  # no copies: its share is recomputed through the backbone
        assert back["recomputed_samples"] == 0  # taken back: the records move whole from the members holding them
        assert {four[0].node_id, newcomer.node_id} <= {d["node_id"] for d in metrics["devices"]}
        assert device_jobs(four + [newcomer]) == [""] * 5
    finally:
        newcomer.kill()
