"""Reading real corpora as they are, and clear errors for bad files."""

from pathlib import Path

import pytest

from pac.data.batching import collate, encode_example
from pac.data.readers import Example, infer_task, read_examples
from pac.errors import DataError
from pac.heads import IGNORE
from pac.metrics import classification_metrics, f1, regression_metrics
from pac.models.tiny import ByteTokenizer

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "mrpc").is_dir(), reason="../shared/data is not beside the project")
def test_reads_mrpc_with_bom_and_stray_quotes():
    examples = read_examples(SHARED / "mrpc" / "train.tsv")
    assert len(examples) == 4076
    assert examples[0].label == 1 and examples[0].text.startswith("Amrozi")
    assert any(e.text.count('"') % 2 == 1 or (e.text_pair or "").count('"') % 2 == 1 for e in examples)
    assert len(read_examples(SHARED / "mrpc" / "test.tsv")) == 1725


@pytest.mark.skipif(not (SHARED / "sst2").is_dir(), reason="../shared/data is not beside the project")
def test_reads_sst2():
    examples = read_examples(SHARED / "sst2" / "dev.tsv")
    assert len(examples) == 872 and {e.label for e in examples} == {0, 1} and examples[0].text_pair is None


def test_jsonl_csv_and_task_inference(tmp_path):
    (tmp_path / "chat.jsonl").write_text('{"prompt": "hi?", "answer": "hello"}\n\n{"prompt": "a?", "answer": "b"}\n')
    (tmp_path / "sts.csv").write_text('sentence1,sentence2,score\n"a, b",c,3.5\nd,e,1\n')
    chat = read_examples(tmp_path / "chat.jsonl")
    sts = read_examples(tmp_path / "sts.csv")
    assert infer_task(chat) == "lm" and infer_task(sts) == "regression"
    assert sts[0] == Example(text="a, b", text_pair="c", score=3.5)


@pytest.mark.parametrize("content,suffix,message", [
    ("text\tlabel\nfine\t1\nbroken\n", ".tsv", r"bad\.tsv:3: 1 fields, header has 2"),
    ("text\tlabel\nfine\tpositive\n", ".tsv", r"bad\.tsv:2: .*label must be an integer"),
    ('{"text": "a", "label": 1}\n{"text": \n', ".jsonl", r"bad\.jsonl:2: not valid JSON"),
    ("words\tlabel\nx\t1\n", ".tsv", r"no text column"),
    ("text\tlabel\n", ".tsv", r"no examples"),
    ("a", ".parquet", r"unknown data format"),
])
def test_bad_files_name_file_and_line(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_examples(path)


def test_chat_loss_only_on_answer_tokens():
    tokenizer = ByteTokenizer()
    item = encode_example(Example(prompt="where is the key?", answer="shed"), tokenizer, "lm", "decoder", 64)
    answer_positions = [i for i, label in enumerate(item.target) if label != IGNORE]
    assert len(answer_positions) == len("shed") + 1  # the answer and its end-of-sequence token
    assert tokenizer.decode([item.input_ids[i] for i in answer_positions]) == "shed"
    batch = collate([item, item], tokenizer.pad_token_id, "lm")
    assert batch["labels"].shape == batch["input_ids"].shape


def test_metrics():
    assert f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    metrics = classification_metrics([1, 0, 1, 1], [1, 0, 0, 1])
    assert metrics["accuracy"] == 0.75 and metrics["f1"] == pytest.approx(0.8)
    assert metrics["accuracy_f1_mean"] == pytest.approx(0.775)
    corr = regression_metrics([1, 2, 3, 4], [2, 4, 6, 9])
    assert corr["spearman"] == pytest.approx(1.0) and 0.98 < corr["pearson"] < 1.0
