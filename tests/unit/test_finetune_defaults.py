"""`pacctl finetune` with no technique flags trains what docs/accuracy.md chose: the last 3 layers tuned
with LoRA, no side network, lr 2e-3, later epochs from an fp32 activation cache."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pacctl.commands.finetune import command


def _data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"{'good' if i % 2 else 'bad'} item {i}", "label": i % 2}) + "\n"
                            for i in range(8)))
    return path


def _job(tmp_path, monkeypatch, *extra):
    monkeypatch.setenv("PAC_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = CliRunner().invoke(command, ["--model", "tiny-llama", "--train", str(_data(tmp_path)), "--epochs", "2",
                                          "--batch-size", "4", "--seq-len", "16", "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_the_default_is_the_tuned_top_layers_from_an_fp32_cache(tmp_path, monkeypatch):
    metrics = _job(tmp_path, monkeypatch)
    technique, job = metrics["job"]["technique"], metrics["job"]
    assert (technique["name"], technique["top_layers"], technique["side_layers"]) == ("parallel", 3, [])
    assert job["train"]["learning_rate"] == 2e-3 and job["cache_precision"] == "fp32"
    assert metrics["cache"]["cache_batches"] > 0  # epoch 2 read the cache


def test_a_quantised_backbone_defaults_to_the_side_network(tmp_path, monkeypatch):
    metrics = _job(tmp_path, monkeypatch, "--quantization", "bf16")
    technique = metrics["job"]["technique"]
    assert (technique["top_layers"], technique["side_layers"]) == (0, None)
    assert metrics["job"]["train"]["learning_rate"] == 1e-3
