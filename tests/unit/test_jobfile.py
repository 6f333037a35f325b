"""The job file of `pacctl train`: parsing, defaults, every class of error, conversions, the examples."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from pac.errors import ConfigError
from pac.formats import CACHE_PRECISIONS, QUANTIZATIONS
from pac.jobfile import load_job, parse_job
from pac.jobfile.sections import CacheSection, DevicesSection, PlanSection, TrainingSection

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "a", "label": 1}\n')
    (tmp_path / "data" / "eval.jsonl").write_text('{"text": "b", "label": 0}\n')
    return tmp_path


def minimal(**sections) -> dict:
    job = {"model": {"name_or_path": "tiny-bert"}, "data": {"train": "data/train.jsonl"},
           "output": {"directory": "out"}}
    for name, values in sections.items():
        job[name] = {**job.get(name, {}), **values}
    return job


def parse(home: Path, mapping: dict):
    return parse_job(mapping, source=str(home / "job.toml"))


def error_of(home: Path, mapping: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(home, mapping)
    return str(caught.value)


def test_minimal_job_and_defaults(home):
    job = parse(home, minimal())
    assert job.model.name_or_path == "tiny-bert" and job.model.quantization == "none"
    assert job.data.train == home / "data" / "train.jsonl" and job.data.eval is None
    assert job.data.task == "auto" and job.data.columns == ()
    assert job.training == TrainingSection()
    assert job.cache == CacheSection() and job.cache.precision == "fp16"
    assert job.devices == DevicesSection() and job.devices.mode == "discover"
    assert job.output.directory == home / "out"
    assert job.plan == PlanSection()


def test_paths_are_relative_to_the_job_file(home, monkeypatch):
    (home / "sub").mkdir()
    (home / "sub" / "job.toml").write_text(
        '[model]\nname_or_path = "tiny-gpt2"\n[data]\ntrain = "../data/train.jsonl"\neval = "../data/eval.jsonl"\n'
        '[cache]\ndirectory = "cache"\n[output]\ndirectory = "~/runs/x"\n')
    monkeypatch.chdir("/")
    monkeypatch.setenv("HOME", str(home))
    job = load_job(home / "sub" / "job.toml")
    assert job.data.train == home / "data" / "train.jsonl"
    assert job.data.eval == home / "data" / "eval.jsonl"
    assert job.cache.directory == home / "sub" / "cache"
    assert job.output.directory == home / "runs" / "x"


def test_model_by_path_and_alias(home):
    model = home / "models" / "mine"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert parse(home, minimal(model={"name_or_path": "models/mine"})).model.name_or_path == str(model)
    assert parse(home, minimal(model={"name_or_path": "SmolLM2"})).model.name_or_path == "smollm2-135m"
    (home / "empty").mkdir()
    assert "holds no config.json" in error_of(home, minimal(model={"name_or_path": "./empty"}))
    assert "does not exist" in error_of(home, minimal(model={"name_or_path": "./absent"}))


def test_full_job_round_trip(home):
    mapping = minimal(
        model={"quantization": "int4"},
        data={"eval": "data/eval.jsonl", "task": "classification", "num_labels": 3, "train_limit": 10,
              "eval_limit": 5, "columns": {"text": "sentence", "label": "y"}},
        training={"epochs": 2, "batch_size": 8, "micro_batches": 4, "seq_len": 32, "reduction_factor": 4,
                  "side_layers": [2, 0], "learning_rate": 1, "weight_decay": 0.01, "warmup_fraction": 0.0,
                  "optimizer": "adamw", "seed": 7, "max_grad_norm": 0.5, "side_precision": "bf16"},
        cache={"precision": "int8", "keep": True, "directory": "/tmp/pac-cache"},
        devices={"mode": "list", "addresses": ["10.0.0.2", "laptop:7444", "[fe80::1]:7443"]},
    )
    job = parse(home, mapping)
    assert job.training.side_layers == (0, 2) and job.training.learning_rate == 1.0
    assert job.training.side_precision == "bf16"
    assert job.data.columns == (("label", "y"), ("text", "sentence"))
    assert job.devices.addresses == ("10.0.0.2", "laptop:7444", "[fe80::1]:7443")
    data = job.to_dict()
    assert data["output"]["directory"] == str(home / "out") and json.dumps(data)
    assert "micro-batches" in job.summary() and "int8" in job.summary()


@pytest.mark.parametrize("mapping, message", [
    (minimal(training={"batchsize": 3}), "unknown key training.batchsize (did you mean training.batch_size?)"),
    (minimal(trainng={}), "unknown key trainng (did you mean training?)"),
    (minimal(data={"columns": {"txt": "a"}}), "unknown key data.columns.txt (did you mean data.columns.text?)"),
    (minimal(cache={"zzz": 1}), "unknown key cache.zzz (known keys: precision, keep, directory, replicas)"),
])
def test_unknown_keys_are_named_with_a_suggestion(home, mapping, message):
    assert error_of(home, mapping).endswith(message)


@pytest.mark.parametrize("section, key, value, message", [
    ("training", "batch_size", "16", 'training.batch_size must be an integer >= 1, got "16"'),
    ("training", "batch_size", True, "training.batch_size must be an integer >= 1, got true"),
    ("training", "epochs", 2.0, "training.epochs must be an integer >= 1, got 2.0"),
    ("training", "learning_rate", "1e-3", 'training.learning_rate must be a number > 0, got "1e-3"'),
    ("training", "learning_rate", False, "training.learning_rate must be a number > 0, got false"),
    ("training", "side_layers", [0, True], "training.side_layers must be a list of layer indices"),
    ("cache", "keep", 1, "cache.keep must be true or false, got 1"),
    ("devices", "addresses", "10.0.0.2", 'devices.addresses must be a list of non-empty strings, got "10.0.0.2"'),
    ("model", "quantization", 8, "model.quantization must be a non-empty string, got 8"),
    ("output", "directory", 3, "output.directory must be a non-empty string (a path), got 3"),
])
def test_wrong_types(home, section, key, value, message):
    assert message in error_of(home, minimal(**{section: {key: value}}))


@pytest.mark.parametrize("section, key, value, message", [
    ("training", "batch_size", 0, "training.batch_size must be an integer >= 1, got 0"),
    ("training", "seq_len", 3, "training.seq_len must be an integer >= 4, got 3"),
    ("training", "learning_rate", 0.0, "training.learning_rate must be a number > 0, got 0.0"),
    ("training", "warmup_fraction", 1.5, "training.warmup_fraction must be a number >= 0 and <= 1, got 1.5"),
    ("training", "weight_decay", -0.1, "training.weight_decay must be a number >= 0, got -0.1"),
    ("training", "max_grad_norm", float("nan"), "training.max_grad_norm must be a number > 0"),
    ("training", "side_layers", [1, 1], "training.side_layers lists a layer twice"),
    ("training", "micro_batches", 3, "training.micro_batches must divide training.batch_size (16)"),
    ("data", "num_labels", 1, "data.num_labels must be an integer >= 2, got 1"),
    ("data", "train_limit", 0, "data.train_limit must be an integer >= 1, got 0"),
    ("devices", "mdns_timeout", 0, "devices.mdns_timeout must be a number > 0 and <= 60, got 0"),
    ("devices", "addresses", ["host:0"], 'devices.addresses has "host:0", which is not host:port'),
    ("devices", "addresses", ["a", "a"], "devices.addresses lists an entry twice"),
])
def test_out_of_range(home, section, key, value, message):
    assert message in error_of(home, minimal(**{section: {key: value}}))


@pytest.mark.parametrize("section, key, value, message", [
    ("data", "task", "clasification", 'data.task must be one of auto, classification, regression, lm, got '
                                      '"clasification" (did you mean "classification"?)'),
    ("training", "technique", "lora", "training.technique must be one of parallel (the only technique"),
    ("training", "optimizer", "sgd", "training.optimizer must be one of adamw"),
    ("training", "side_precision", "fp16", "training.side_precision must be one of fp32, bf16"),
    ("cache", "precision", "fp8", "cache.precision must be one of fp32, fp16, bf16, int8, none"),
    ("model", "quantization", "int2", "model.quantization must be one of none, bf16, fp16, int8, int4"),
    ("devices", "mode", "all", "devices.mode must be one of discover, list, cluster"),
    ("model", "name_or_path", "minilmm", 'model.name_or_path is not a known model, a model in a model store'),
])
def test_bad_enums(home, section, key, value, message):
    assert message in error_of(home, minimal(**{section: {key: value}}))


def test_missing_keys_and_tables(home):
    mapping = minimal()
    del mapping["data"]["train"]
    assert error_of(home, mapping).endswith("data.train is required")
    mapping = minimal()
    del mapping["output"]
    assert error_of(home, mapping).endswith("the [output] table is required")
    assert error_of(home, {**minimal(), "devices": "all"}).endswith('[devices] must be a table, got "all"')
    assert "version must be 1" in error_of(home, {**minimal(), "version": 2})


def test_missing_and_wrong_files(home):
    assert "data.train names no file" in error_of(home, minimal(data={"train": "data/absent.jsonl"}))
    assert "data.eval must be a file" in error_of(home, minimal(data={"eval": "data"}))
    (home / "data" / "train.parquet").write_text("")
    assert "must be a .jsonl, .json, .csv, .tsv file" in error_of(home, minimal(data={"train": "data/train.parquet"}))
    (home / "taken").write_text("")
    assert "output.directory must be a directory" in error_of(home, minimal(output={"directory": "taken"}))
    assert "plan.file names no file" in error_of(home, minimal(plan={"file": "plan.json"}))
    (home / "plan.json").write_text("{}")
    assert "plan.file is not a readable plan" in error_of(home, minimal(plan={"file": "plan.json"}))


def test_inconsistent_keys(home):
    assert "data.num_labels applies to classification only" in \
        error_of(home, minimal(data={"task": "lm", "num_labels": 2}))
    assert "data.eval_limit needs data.eval" in error_of(home, minimal(data={"eval_limit": 3}))
    assert 'cache.keep needs a cache, but cache.precision is "none"' in \
        error_of(home, minimal(cache={"precision": "none", "keep": False}))
    assert 'devices.addresses must list at least one device when devices.mode is "list"' in \
        error_of(home, minimal(devices={"mode": "list"}))
    assert "devices.mdns_timeout applies to mDNS" in \
        error_of(home, minimal(devices={"mode": "list", "addresses": ["a"], "mdns_timeout": 1}))
    assert "devices.insecure talks to loopback" in \
        error_of(home, minimal(devices={"insecure": True, "addresses": ["10.0.0.2"]}))
    job = parse(home, minimal(devices={"insecure": True, "addresses": ["127.0.0.1:7000", "[::1]:7001"]}))
    assert job.devices.insecure


def test_load_job_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="absent.toml: no such job file"):
        load_job(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_job(tmp_path / "bad.toml")


def test_to_finetune_job(home):
    job = parse(home, minimal(
        data={"task": "auto", "eval": "data/eval.jsonl", "train_limit": 4},
        training={"epochs": 2, "batch_size": 4, "reduction_factor": 4, "side_layers": [0], "seed": 3,
                  "learning_rate": 0.01, "weight_decay": 0.1, "warmup_fraction": 0.2, "max_grad_norm": 2.0},
        cache={"precision": "bf16", "keep": True, "directory": "c"}, model={"quantization": "int8"}))
    finetune = job.to_finetune_job()
    assert (finetune.model, finetune.train_file, finetune.eval_file, finetune.task) == \
        ("tiny-bert", str(home / "data" / "train.jsonl"), str(home / "data" / "eval.jsonl"), None)
    assert (finetune.technique.name, finetune.technique.reduction_factor, finetune.technique.side_layers) == \
        ("parallel", 4, (0,))
    train = finetune.train
    assert (train.epochs, train.batch_size, train.learning_rate, train.weight_decay, train.warmup_fraction,
            train.seed, train.max_grad_norm) == (2, 4, 0.01, 0.1, 0.2, 3, 2.0)
    assert (finetune.quantization, finetune.cache_precision, finetune.cache_dir, finetune.keep_cache) == \
        ("int8", "bf16", str(home / "c"), True)
    assert finetune.output_dir == str(home / "out") and finetune.train_limit == 4
    assert parse(home, minimal(cache={"precision": "none"})).to_finetune_job().cache_precision is None
    table = parse(home, minimal(data={"columns": {"text": "t"}, "header": ["t", "label"], "quoting": "none"})
                  ).to_finetune_job().table
    assert (table.fields, table.names, table.quoting) == ((("text", "t"),), ("t", "label"), "none")


def test_data_quoting_and_header(home):
    job = parse(home, minimal(data={"header": ["label", "id", "text"], "quoting": "csv"}))
    assert job.data.header == ("label", "id", "text") and job.data.quoting == "csv"
    assert "no header row: columns ['label', 'id', 'text'], quoting csv" in job.summary()
    assert parse(home, minimal()).data.table_format().quoting == "auto"
    with pytest.raises(ConfigError, match=r"data\.quoting must be one of auto, csv, none"):
        parse(home, minimal(data={"quoting": "excel"}))
    with pytest.raises(ConfigError, match=r"data\.header lists an entry twice"):
        parse(home, minimal(data={"header": ["text", "text"]}))
    with pytest.raises(ConfigError, match=r"data\.header must be a list of non-empty strings"):
        parse(home, minimal(data={"header": "label,text"}))


def test_to_training_job(home):
    job = parse(home, minimal(model={"quantization": "int4"}, data={"train_limit": 50},
                              training={"batch_size": 8, "micro_batches": 2, "epochs": 4},
                              cache={"precision": "int8"}))
    planned = job.to_training_job(samples=120)
    assert (planned.samples, planned.batch_size, planned.micro_batches, planned.epochs, planned.weight_bits,
            planned.cache_bytes) == (50, 8, 2, 4, 4, 1)
    assert parse(home, minimal()).to_training_job(120).samples == 120


def test_plan_must_match_the_job(home):
    from pac.planner.planner import plan_job
    from pac.planner.synthetic import synthetic_home

    plan = plan_job(synthetic_home(4, 2), parse(home, minimal()).to_training_job(64)).plan
    plan.save(home / "plan.json")
    job = parse(home, minimal(plan={"file": "plan.json"}))
    assert job.plan.file == home / "plan.json"
    message = error_of(home, minimal(plan={"file": "plan.json"}, training={"batch_size": 32}))
    assert "plan.file was planned for batch_size 16 but this job has 32 (training.batch_size)" in message


def test_every_format_a_job_can_name_is_implemented(home):
    """pac.formats is the one list: each name the job file accepts runs in the code behind it."""
    import torch

    from pac.cache.codec import decode, encode
    from pac.models.backbone import load_backbone
    from pac.quant import quantize_backbone

    for precision in CACHE_PRECISIONS:
        assert parse(home, minimal(cache={"precision": precision})).cache.precision == precision
        states = torch.randn(3, 8)
        torch.testing.assert_close(decode(encode(states, precision), precision, 3, 8), states, atol=0.05, rtol=0.02)
    for quantization in QUANTIZATIONS:
        assert parse(home, minimal(model={"quantization": quantization})).model.quantization == quantization
        backbone = load_backbone("tiny-bert")
        quantize_backbone(backbone, quantization)
        assert backbone.run({"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3)}).final.isfinite().all()


@pytest.mark.parametrize("name", ["mrpc-minilm.toml", "household-smollm2.toml"])
def test_example_files_parse(name):
    if name.startswith("mrpc") and not (ROOT.parent / "shared" / "data" / "mrpc" / "train.tsv").is_file():
        pytest.skip("MRPC data not present at ../shared/data")
    job = load_job(ROOT / "examples" / name)
    assert job.output.directory.parent == ROOT / "runs"
    assert job.data.train.is_file()


def test_printed_example_is_complete_and_parses(tmp_path):
    from pacctl.commands.job import example_job

    text = example_job()
    (tmp_path / "job.toml").write_text(text)
    job = load_job(tmp_path / "job.toml")
    assert job.model.name_or_path == "smollm2-135m" and job.data.task == "lm"
    # Every key of every section is shown, set or commented out.
    for section in (job.model, job.data, job.training, job.cache, job.devices, job.output, job.plan):
        for key in type(section).__dataclass_fields__:
            shown = (f"\n{key} =", f"\n# {key} =", f"\n[data.{key}]")
            assert any(form in text for form in shown), key
    assert tomllib.loads(text)["version"] == 1


def test_cli_check_and_example(tmp_path):
    from pacctl.cli import main

    (tmp_path / "job.toml").write_text('[model]\nname_or_path = "tiny-bert"\n[data]\ntrain = "x.tsv"\n'
                                       '[output]\ndirectory = "o"\n')
    assert main(["job", "check", str(tmp_path / "job.toml")]) == 1
    assert main(["job", "example"]) == 0


def test_module_is_pure():
    import subprocess
    import sys

    code = "import sys, pac.jobfile; print(sorted({'torch', 'grpc', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout.strip() == "[]"


def test_a_job_written_from_tables_reads_back_as_the_same_job(home):
    from pac.jobfile.parse import job_toml

    tables = minimal(training={"learning_rate": 1e-5, "side_layers": [0, 2], "activation_checkpointing": True},
                     devices={"mode": "list", "addresses": ["127.0.0.1:7443", "[::1]:7443"]},
                     data={"train": str(home / "data" / "train.jsonl"), "eval_limit": None})
    tables["output"]["directory"] = str(home / "out \"quoted\"")
    (home / "job.toml").write_text(job_toml(tables))
    assert load_job(home / "job.toml") == parse(home, {k: {n: v for n, v in t.items() if v is not None}
                                                       for k, t in tables.items()})


def test_every_option_has_help_and_docs_cli_md_is_the_commands_own_help():
    import subprocess
    import sys

    from pacctl.clidoc import missing_help

    assert missing_help() == []
    # in a process of its own: click keeps a command's help option as the first caller made it
    made = subprocess.run([sys.executable, "-m", "pacctl.clidoc"], capture_output=True, text=True, timeout=60,
                          check=True, cwd=ROOT)
    assert (ROOT / "docs" / "cli.md").read_text() == made.stdout, "docs/cli.md is stale: run `make cli-docs`"


def test_defaults_tune_the_top_layers_unless_the_backbone_is_quantised(home):
    job = parse(home, minimal())
    assert (job.training.top_layers, job.training.side_layers, job.training.learning_rate) == (3, (), 2e-3)
    assert job.to_training_job(10).top_layers == 3 and job.to_finetune_job().technique.top_layers == 3
    quantised = parse(home, minimal(model={"name_or_path": "tiny-bert", "quantization": "int8"}))
    assert (quantised.training.top_layers, quantised.training.side_layers, quantised.training.learning_rate) == \
        (0, None, 1e-3)
    side = parse(home, minimal(training={"top_layers": 0}))
    assert side.training.side_layers is None  # the side network on every layer
    assert "model.quantization" in error_of(home, minimal(model={"name_or_path": "tiny-bert", "quantization": "bf16"},
                                                           training={"top_layers": 2}))
    assert "nothing would train" in error_of(home, minimal(training={"top_layers": 0, "side_layers": []}))
