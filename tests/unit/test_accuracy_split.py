"""bench.accuracy's learning-rate search split: validation and training subsets are disjoint and seeded."""

import json

import pytest

from bench.accuracy import LEARNING_RATES, markdown_table, parse_lr_grid, split_train, write_jsonl
from pac.data.prepare import subset
from pac.data.readers import Example, read_examples


def _examples(n: int, pairs: bool = False) -> list[Example]:
    return [Example(text=f"sentence {i}", text_pair=f"pair {i}" if pairs else None, label=i % 2) for i in range(n)]


def test_validation_and_training_are_disjoint_and_sized():
    examples = _examples(300)
    validation, training = split_train(examples, 50, 200, seed=0)
    assert len(validation) == 50 and len(training) == 200
    assert not {e.text for e in validation} & {e.text for e in training}
    assert examples == _examples(300)  # the input is not shuffled in place


def test_split_is_seeded():
    examples = _examples(300)
    assert split_train(examples, 50, 200, seed=0) == split_train(examples, 50, 200, seed=0)
    assert split_train(examples, 50, 200, seed=0) != split_train(examples, 50, 200, seed=1)


def test_split_is_one_shuffle_validation_first():
    examples = _examples(300)
    validation, training = split_train(examples, 50, 200, seed=3)
    whole = subset(examples, 299, 3)  # the same seeded shuffle subset does
    assert validation == whole[:50] and training == whole[50:250]
    assert split_train(examples, 0, 200, seed=3)[1] == subset(examples, 200, 3)  # no validation: the old subset
    assert len(split_train(examples, 50, None, seed=3)[1]) == 250


def test_split_refuses_too_few_examples():
    with pytest.raises(ValueError):
        split_train(_examples(100), 50, 60, seed=0)


def test_jsonl_round_trip(tmp_path):
    for pairs in (False, True):
        examples = _examples(10, pairs)
        assert read_examples(write_jsonl(tmp_path / "x.jsonl", examples)) == examples


def test_parse_lr_grid():
    grid = parse_lr_grid("parallel=1e-3,2e-3 ; lora=2.5e-4", ["parallel", "lora", "full"])
    assert grid == {"parallel": [1e-3, 2e-3], "lora": [2.5e-4], "full": [LEARNING_RATES["full"]]}
    for bad in ("nope=1e-3", "lora=", "lora=-1"):
        with pytest.raises(ValueError):
            parse_lr_grid(bad, ["lora"])


def test_markdown_table_with_search():
    rows = [{"task": "sst2", "technique": "lora", "value": 0.8, "learning_rate": 5e-4,
             "validation": [{"learning_rate": 2.5e-4, "value": 0.7}, {"learning_rate": 5e-4, "value": 0.75}]}]
    table = markdown_table(rows)
    assert "80.00 (lr 0.0005)" in table and "0.0005: 75.00*" in table and "0.00025: 70.00," in table
    json.dumps(rows)


def test_seeded_rows_show_mean_spread_and_every_seed():
    from bench.accuracy import markdown_table

    row = {"task": "mrpc", "technique": "parallel", "metric": "accuracy_f1_mean", "value": 0.75, "std": 0.01,
           "values": [0.74, 0.75, 0.76], "learning_rate": 1e-3}
    table = markdown_table([row])
    assert "mean ± std over seeds" in table and "75.00 ± 1.00 (lr 0.001; 74.00, 75.00, 76.00)" in table


def test_seeds_refuse_a_search():
    import pytest

    from bench.accuracy import main

    with pytest.raises(SystemExit):
        main(["--seeds", "0,1", "--lr-grid", "parallel=1e-3", "--json", "/dev/null"])
