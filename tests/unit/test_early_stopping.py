"""A validation split carved from the training file, scored after every epoch; early stopping keeps the best."""

from __future__ import annotations

import pytest
import torch

from pac.data.prepare import split_validation, subset, validation_count
from pac.errors import ConfigError, DataError
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.techniques.build import TechniqueConfig, build_model
from pac.train import loop
from pac.train.loop import TrainConfig, train
from tests.unit.test_cache import items_for


def test_the_validation_split_is_disjoint_and_leaves_the_usual_subset_without_one():
    examples = list(range(100))
    held, training = split_validation(examples, 20, 30, seed=4)
    assert len(held) == 20 and len(training) == 30 and not set(held) & set(training)
    assert split_validation(examples, 0, 30, seed=4) == ([], subset(examples, 30, 4))
    assert validation_count(0.1, 100) == 10 and validation_count(25, 100) == 25
    with pytest.raises(DataError, match="leaves 0 of the training file's 10 examples"):
        validation_count(10, 10)
    with pytest.raises(DataError, match="a count of examples"):
        validation_count(2.5, 10)


def scripted_scores(monkeypatch, scores: list[float]):
    """The validation score of each epoch, as given (the training itself is real)."""
    calls = iter(scores)
    real = loop.evaluate

    def scored(model, items, task, pad_id, batch_size=64, states=None):
        real(model, items, task, pad_id, batch_size, states)
        return {"accuracy": next(calls)}

    monkeypatch.setattr(loop, "evaluate", scored)


def trained(monkeypatch, scores, patience, epochs=6):
    backbone = load_backbone("tiny-bert")
    torch.manual_seed(0)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    items = items_for(backbone)
    snapshots = []
    original = loop._validated

    def snapshot(model, *args):
        snapshots.append({k: v.clone() for k, v in model.side.state_dict().items()})
        return original(model, *args)

    monkeypatch.setattr(loop, "_validated", snapshot)
    scripted_scores(monkeypatch, scores)
    config = TrainConfig(epochs=epochs, batch_size=4, learning_rate=1e-2, patience=patience)
    result = train(model, items[:8], "classification", 0, config, validate_on=items[8:])
    return model, result, snapshots


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch(monkeypatch):
    model, result, snapshots = trained(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.9, 0.9], patience=2)
    assert result.stopped_early and len(result.epoch_times_s) == 4 and result.best_epoch == 2
    assert [v["accuracy"] for v in result.validation_history] == [0.5, 0.7, 0.6, 0.65]
    for key, value in model.side.state_dict().items():  # the weights after epoch 2, not after epoch 4
        assert torch.equal(value, snapshots[1][key]), key
    assert not torch.equal(model.side.state_dict()["up.weight"], snapshots[3]["up.weight"])


def test_without_patience_every_epoch_runs_and_the_best_is_kept(monkeypatch):
    model, result, snapshots = trained(monkeypatch, [0.5, 0.8, 0.6], patience=0, epochs=3)
    assert not result.stopped_early and len(result.epoch_times_s) == 3 and result.best_epoch == 2
    assert torch.equal(model.side.state_dict()["up.weight"], snapshots[1]["up.weight"])


def test_patience_without_a_validation_split_is_refused():
    from pac.train.finetune import FinetuneJob

    with pytest.raises(ConfigError, match="hold out a validation split"):
        FinetuneJob(model="tiny-bert", train_file="x.jsonl", train=TrainConfig(patience=2))


def test_job_file_keys_for_the_validation_split_and_patience(tmp_path):
    from pac.jobfile import parse_job

    def job(data: dict, training: dict):
        mapping = {"model": {"name_or_path": "tiny-bert"}, "data": {"train": str(tmp_path / "t.jsonl"), **data},
                   "training": training, "output": {"directory": str(tmp_path / "out")}}
        return parse_job(mapping, source="job.toml")

    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": 0}\n')
    parsed = job({"validation": 0.2}, {"patience": 2})
    assert parsed.data.validation == 0.2 and parsed.train_config().patience == 2
    assert parsed.to_finetune_job().validation == 0.2
    with pytest.raises(ConfigError, match="job.toml: training.patience stops on a validation score: set data.validation"):
        job({}, {"patience": 2})
    with pytest.raises(ConfigError, match="data.validation must be a count of examples"):
        job({"validation": 2.5}, {})
