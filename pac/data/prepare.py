"""A job's examples as every path reads them: the same seeded subsets, task and label count.

`pacctl finetune` (pac.train.finetune), the controller of `pacctl train` (pac.cluster.prepare) and the
benchmarks read their data here, so that a distributed job and a single-device run of the same job see
the very same examples in the same order.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

from pac.data.batching import Encoded, encode_example
from pac.data.readers import Example, TableFormat, infer_task, read_examples
from pac.errors import DataError


@dataclass(frozen=True)
class JobData:
    train: list[Example]
    eval: list[Example]
    task: str  # classification | regression | lm
    num_labels: int  # classification: classes (2 where the data has no labels)
    validation: list[Example] = dataclasses.field(default_factory=list)  # carved out of the training file


def subset(examples: list, limit: int | None, seed: int) -> list:
    """A seeded random subset of `limit` examples (all of them, in file order, without a limit)."""
    if limit is None or limit >= len(examples):
        return examples
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:limit]


def validation_count(validation: float, examples: int) -> int:
    """`validation` as a number of examples: a count (>= 1), or a fraction of the training file (< 1)."""
    if validation < 0 or (validation >= 1 and validation != int(validation)):
        raise DataError(f"validation must be a count of examples (>= 1) or a fraction below 1, got {validation}")
    count = int(validation) if validation >= 1 else round(validation * examples)
    if validation and not 1 <= count < examples:
        raise DataError(f"a validation split of {validation} leaves {examples - count} of the training file's "
                        f"{examples} examples to train on")
    return count


def split_validation(examples: list, validation: int, train_limit: int | None, seed: int) -> tuple[list, list]:
    """(validation, training) from one seeded shuffle of the training file: the validation split is its
    first `validation` examples and the training subset the next `train_limit` (all the rest without a
    limit), disjoint. With no validation split the training subset is exactly `subset`'s."""
    if not validation:
        return [], subset(examples, train_limit, seed)
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    rest = shuffled[validation:]
    return shuffled[:validation], rest if train_limit is None else rest[:train_limit]


def read_job_data(train: str | Path, eval_file: str | Path | None, table: TableFormat, train_limit: int | None,
                  eval_limit: int | None, seed: int, task: str | None = None,
                  num_labels: int | None = None, validation: float = 0) -> JobData:
    """Read the training and evaluation files; `task` None: inferred from the training data's columns;
    `num_labels` None: the largest training label + 1; `validation` (a count, or a fraction below 1)
    examples of the training file held out as a validation split (split_validation)."""
    examples = read_examples(train, table)
    held_out, train_examples = split_validation(examples, validation_count(validation, len(examples)),
                                                train_limit, seed)
    eval_examples = subset(read_examples(eval_file, table), eval_limit, seed) if eval_file else []
    labels = {e.label for e in train_examples if e.label is not None}
    return JobData(train_examples, eval_examples, task or infer_task(train_examples),
                   num_labels or (max(labels) + 1 if labels else 2), held_out)


def encode_job_data(data: JobData, tokenizer, family: str, seq_len: int) -> tuple[list[Encoded], list[Encoded]]:
    """The training and evaluation examples as token ids (each numbered by its position)."""
    return tuple([encode_example(e, tokenizer, data.task, family, seq_len, i) for i, e in enumerate(examples)]
                 for examples in (data.train, data.eval))


def encode_validation(data: JobData, tokenizer, family: str, seq_len: int) -> list[Encoded]:
    return [encode_example(e, tokenizer, data.task, family, seq_len, i) for i, e in enumerate(data.validation)]
