"""A job's examples as every path reads them: the same seeded subsets, task and label count.

`pacctl finetune` (pac.train.finetune), the controller of `pacctl train` (pac.cluster.prepare) and the
benchmarks read their data here, so that a distributed job and a single-device run of the same job see
the very same examples in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pac.data.batching import Encoded, encode_example
from pac.data.readers import Example, TableFormat, infer_task, read_examples


@dataclass(frozen=True)
class JobData:
    train: list[Example]
    eval: list[Example]
    task: str  # classification | regression | lm
    num_labels: int  # classification: classes (2 where the data has no labels)


def subset(examples: list, limit: int | None, seed: int) -> list:
    """A seeded random subset of `limit` examples (all of them, in file order, without a limit)."""
    if limit is None or limit >= len(examples):
        return examples
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:limit]


def read_job_data(train: str | Path, eval_file: str | Path | None, table: TableFormat, train_limit: int | None,
                  eval_limit: int | None, seed: int, task: str | None = None,
                  num_labels: int | None = None) -> JobData:
    """Read the training and evaluation files; `task` None: inferred from the training data's columns;
    `num_labels` None: the largest training label + 1."""
    train_examples = subset(read_examples(train, table), train_limit, seed)
    eval_examples = subset(read_examples(eval_file, table), eval_limit, seed) if eval_file else []
    labels = {e.label for e in train_examples if e.label is not None}
    return JobData(train_examples, eval_examples, task or infer_task(train_examples),
                   num_labels or (max(labels) + 1 if labels else 2))


def encode_job_data(data: JobData, tokenizer, family: str, seq_len: int) -> tuple[list[Encoded], list[Encoded]]:
    """The training and evaluation examples as token ids (each numbered by its position)."""
    return tuple([encode_example(e, tokenizer, data.task, family, seq_len, i) for i, e in enumerate(examples)]
                 for examples in (data.train, data.eval))
