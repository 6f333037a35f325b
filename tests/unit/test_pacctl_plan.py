"""`pacctl plan`: the table a person reads, the JSON `pacctl train` takes, and the error when nothing fits."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pac.planner.plan import Plan
from pac.planner.synthetic import tiny_home
from pacctl.commands.plan import command


def _write(tmp_path, home):
    path = tmp_path / "home.json"
    path.write_text(json.dumps(home.to_dict()))
    return path


def test_plan_prints_the_stages_and_writes_json(tmp_path):
    home = tiny_home([[1.0] * 4] * 4, latency_s=1e-3)
    devices = tuple(d.__class__(**{**d.__dict__, "host": "box", "host_cores": 2, "threads": 1})
                    for d in home.devices)
    shared = home.__class__(home.model, devices, default_link=home.default_link)
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(command, ["--profile", str(_write(tmp_path, shared)), "--batch-size", "16",
                                          "--samples", "64", "--epochs", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "phase 1 (epoch 1): pipeline stages" in result.output and "why:" in result.output
    assert "share its cores" in result.output and "not used: " in result.output
    plan = Plan.load(out)
    assert len(plan.devices) == 2 and plan.job.batch_size == 16


def test_a_job_that_fits_nowhere_is_one_clear_error(tmp_path):
    home = tiny_home([[1.0] * 4] * 2, [3_000, 3_000])  # 8000 bytes of 16-bit weights on 2 x 3000
    result = CliRunner().invoke(command, ["--profile", str(_write(tmp_path, home)), "--batch-size", "2",
                                          "--samples", "8", "--out", str(tmp_path / "plan.json")])
    assert result.exit_code != 0 and "--weight-bits 8" in result.output
    assert not (tmp_path / "plan.json").exists()


def test_the_tuned_top_layers_stay_in_the_last_stage(tmp_path):
    """As a job's default, `pacctl plan` keeps the backbone's last 3 layers in one stage, so `pacctl train`
    takes the plan; --top-layers 0 lets the planner cut anywhere."""
    home = tiny_home([[1.0] * 6] * 3, [15_000] * 3, latency_s=1e-3)  # 32-bit: 2 layers a device at most
    profile = _write(tmp_path, home)
    cut = CliRunner().invoke(command, ["--profile", str(profile), "--batch-size", "6", "--samples", "12",
                                       "--top-layers", "0", "--out", str(tmp_path / "cut.json")])
    assert cut.exit_code == 0 and Plan.load(tmp_path / "cut.json").phase1.stages[-1].first_layer == 4  # 2+2+2
    for extra, tuned in (([], 3), (["--weight-bits", "16"], 0), (["--top-layers", "1"], 1)):
        out = tmp_path / f"plan{tuned}.json"
        result = CliRunner().invoke(command, ["--profile", str(profile), "--batch-size", "6", "--samples", "12",
                                              "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        plan = Plan.load(out)
        last = plan.phase1.stages[-1]
        assert plan.job.top_layers == tuned and last.first_layer <= last.end_layer - tuned
        assert (f"last {tuned} layer(s) tuned" in result.output) == bool(tuned)


def test_tuned_top_layers_that_fit_no_last_stage_are_named_as_the_fix(tmp_path):
    home = tiny_home([[1.0] * 6] * 3, [12_000] * 3, latency_s=1e-3)  # 3 layers fit no device at 32 bits
    result = CliRunner().invoke(command, ["--profile", str(_write(tmp_path, home)), "--batch-size", "6",
                                          "--samples", "12", "--out", str(tmp_path / "plan.json")])
    assert result.exit_code != 0 and "--top-layers 0" in result.output, result.output
