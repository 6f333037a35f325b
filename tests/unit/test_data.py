"""Reading real corpora as they are, and clear errors for bad files."""

import csv
from pathlib import Path

import pytest

from pac.data.batching import collate, encode_example
from pac.data.readers import Example, TableFormat, infer_task, read_examples
from pac.errors import ConfigError, DataError
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


REVIEWS = [
    ("Great kettle.\nBoils fast;\tquiet too.", 1),
    ('The lid says "auto-off" but it ""never"" turns off', 0),
    ("Fine", 1),
    ("Broke after a week.\r\n\r\nWould not buy again, \"sadly\".", 0),
]


@pytest.mark.parametrize("suffix,delimiter", [(".tsv", "\t"), (".csv", ",")])
def test_quoted_multiline_fields_as_spreadsheets_write_them(tmp_path, suffix, delimiter):
    """Python's csv module (as Excel, LibreOffice and pandas) quotes fields holding the delimiter, newlines
    or quotes, doubling the quotes inside: every field reads back exactly."""
    path = tmp_path / f"reviews{suffix}"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["review", "label"])
        writer.writerows(REVIEWS)
    assert path.read_text().count("\n") > len(REVIEWS) + 1  # some records span several lines
    examples = read_examples(path)
    assert [(e.text, e.label) for e in examples] == REVIEWS
    assert read_examples(path, TableFormat(quoting="csv")) == examples
    with pytest.raises(DataError, match=rf"reviews\{suffix}:2: 1 fields, header has 2 \(read with quotes as plain text\)"):
        read_examples(path, TableFormat(quoting="none"))  # the old reading: the first review's own line


def test_glue_file_with_stray_quotes_is_read_as_it_is(tmp_path):
    """An unbalanced quote opening a field would swallow the lines after it as one quoted field: auto
    reads such a file with quotes as text, and the csv rule names where it breaks."""
    path = tmp_path / "pairs.tsv"
    path.write_text('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
                    '1\t11\t12\tHe said "yes, of course.\tHe agreed.\n'
                    '0\t13\t14\t"Not now" she said, "later\tShe refused.\n'
                    '1\t15\t16\tA 12" pipe\tA twelve-inch pipe.\n')
    examples = read_examples(path)
    assert [e.text for e in examples] == ['He said "yes, of course.', '"Not now" she said, "later', 'A 12" pipe']
    assert [e.label for e in examples] == [1, 0, 1] and examples[0].text_pair == "He agreed."
    assert read_examples(path, TableFormat(quoting="none")) == examples
    with pytest.raises(DataError, match=r"pairs\.tsv:3: .* expected after '\"'.*\(read with quoted fields \(RFC 4180\)\)"):
        read_examples(path, TableFormat(quoting="csv"))


def test_a_file_neither_rule_reads_names_both_failures(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('text,label\nfine,1\nbroken\n')
    with pytest.raises(DataError, match=r"bad\.csv:3: 1 fields, header has 2$"):
        read_examples(path)  # both rules stop at the same line: said once
    path.write_text('text,label\n"one, two",1\nthree,4,5\n')
    with pytest.raises(DataError, match=r"neither quoting rule reads the whole file: with quoted fields "
                                        r"\(RFC 4180\), line 3: 3 fields, header has 2; with quotes as plain "
                                        r"text, line 2: 3 fields, header has 2\. .*--quoting csv\|none"):
        read_examples(path)


def test_a_file_without_a_header_row(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("1\t702876\t702977\tAmrozi accused his brother of lying.\tHe accused his brother.\n"
                    "0\t2108705\t2108831\tYucaipa owned Dominick's.\tYucaipa bought Dominick's in 1995.\n")
    with pytest.raises(DataError) as error:
        read_examples(path)
    message = str(error.value)
    assert "train.tsv:1: no text column" in message and "no header row" in message
    assert "--header label,column2,column3,text,text_pair" in message
    assert 'data.header = ["label", "column2", "column3", "text", "text_pair"]' in message
    examples = read_examples(path, TableFormat(names=("label", "id1", "id2", "text", "text_pair")))
    assert len(examples) == 2 and examples[1] == Example(text="Yucaipa owned Dominick's.",
                                                         text_pair="Yucaipa bought Dominick's in 1995.", label=0)
    with pytest.raises(DataError, match=r"train\.tsv:1: 5 fields, header has 2"):
        read_examples(path, TableFormat(names=("label", "text")))
    with pytest.raises(DataError, match=r"no text column .* in header \['a', 'b', 'c', 'd', 'e'\]"):
        read_examples(path, TableFormat(names=("a", "b", "c", "d", "e")))


def test_table_format_checks_itself():
    with pytest.raises(ConfigError, match="quoting must be one of auto, csv, none"):
        TableFormat(quoting="excel")
    with pytest.raises(ConfigError, match="distinct"):
        TableFormat(names=("text", "text"))


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
