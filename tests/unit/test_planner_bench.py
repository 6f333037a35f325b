"""bench.planner: mini-batch settings, the per-setting summary, and one tiny end-to-end run."""

from __future__ import annotations

import argparse
import json

import pytest

from bench import planner as bench


def test_batch_sizes_parse_n_and_integers() -> None:
    assert bench._batches("n, 16,32") == ["n", "16", "32"]
    with pytest.raises(argparse.ArgumentTypeError, match="positive integer or n"):
        bench._batches("n,0")


def test_summary_per_batch_setting() -> None:
    def row(batch: str, speedup: float, layers: int = 96, devices: int = 16) -> dict:
        return {"batch_setting": batch, "layers": layers, "devices": devices, "plan_time_s": 0.5,
                "plan_cpu_time_s": 0.4, "speedup_vs_pipeline_only": speedup,
                "speedup_vs_pipeline_best_order": None, "allreduce_tail_fraction": 0.1,
                "speedup_vs_data_only": None if layers == 96 else speedup + 0.5}

    summary = bench.summarise([row("n", 1.0), row("n", 1.5, 24, 4), row("16", 2.0)], ["n", "16"])
    assert summary["n"]["speedup_vs_pipeline_only"] == {"mean": 1.25, "min": 1.0, "max": 1.5}
    assert summary["n"]["speedup_vs_data_only"] == {"mean": 2.0, "min": 2.0, "max": 2.0}
    assert summary["n"]["homes_data_only_fits"] == 1
    assert summary["n"]["homes"] == 2 and summary["16"]["homes"] == 1
    assert summary["n"]["plan_cpu_time_96_layers_16_devices_s"] == 0.4
    assert "speedup_vs_pipeline_best_order" not in summary["n"]


def test_tiny_run_writes_report_and_chart(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "planner.json"
    assert bench.main(["--layers", "4", "--devices", "2", "--seeds", "1", "--repeat", "1",
                       "--batch-sizes", "n,4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["batch_size"] for r in report["rows"]] == [2, 4]
    assert set(report["summary"]) == {"n", "4"}
    assert report["config"]["batch_scaling"]["batches"] == [1, 2, 4, 8, 16, 32]
    assert all(r["speedup_vs_pipeline_only"] >= 1.0 - 1e-9 for r in report["rows"])
    assert out.with_suffix(".png").exists()


def test_what_if_runs_never_overwrite_the_report_and_leave_the_model_as_it_was(tmp_path) -> None:
    from pac.planner.cost import CostModel

    with pytest.raises(SystemExit):
        bench.main(["--what-if", "free-allreduce", "--json", str(bench.DEFAULT_JSON)])
    original = CostModel.allreduce
    with bench.what_if("free-allreduce"):
        assert CostModel.allreduce is not original
    assert CostModel.allreduce is original


def test_the_lora_baselines_pay_for_their_backward_and_activations() -> None:
    """The paper's baselines with their own technique: a LoRA layer's backward runs through the frozen
    weights (slower than its forward), autograd keeps its activations, the stages send h and its gradient,
    and the AllReduce sums LoRA's factors: the same devices plan slower than PAC."""
    from pac.planner.memory import boundary_bytes_per_sample
    from pac.planner.planner import plan_job
    from pac.planner.synthetic import synthetic_home
    from pac.planner.workload import TrainingJob

    pac, lora = synthetic_home(24, 4, seed=1), synthetic_home(24, 4, seed=1, technique="lora")
    assert [d.name for d in pac.devices] == [d.name for d in lora.devices]
    for mine, theirs in zip(pac.devices, lora.devices, strict=True):
        assert all(b > f for f, b in zip(theirs.forward_s[0], theirs.backward_s[0], strict=True))
        assert sum(theirs.backward_s[0]) > 3 * sum(mine.backward_s[0])
    assert lora.model.activation_bytes_per_sample[0] > 3 * pac.model.activation_bytes_per_sample[0]
    job = TrainingJob(samples=256, batch_size=8, epochs=3)
    hidden_bytes = lora.model.seq_len * lora.model.hidden_size * job.wire_bytes
    assert boundary_bytes_per_sample(lora.model, job) == (hidden_bytes, hidden_bytes)
    ours = plan_job(pac, job).plan.phase1.epoch_s
    assert plan_job(lora, job, "pipeline-only").plan.phase1.epoch_s > 1.5 * ours
