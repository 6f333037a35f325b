"""Read examples from JSONL, CSV or TSV files.

An example is one text, a text pair, a label or a score, or a prompt/answer pair for a chat model.
Columns are found by name (see COLUMN_NAMES) or given explicitly (TableFormat). A UTF-8 byte order mark
is ignored.

CSV and TSV files come in two dialects, and TableFormat.quoting chooses per file:
- "csv": RFC 4180 quoting, as spreadsheets, pandas and Python's csv module write it: a field in double
  quotes may hold the delimiter, newlines and doubled quotes ("").
- "none": quotes are plain text. Real corpora need it: GLUE MRPC's sentences hold unbalanced quotes.
- "auto" (the default): "csv" when the whole file reads consistently with it (every record as many
  fields as the header, every quoted field closed before a delimiter), else "none" when that does; if
  neither does, the error names the line where each rule failed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pac.errors import ConfigError, DataError

QUOTINGS = ("auto", "csv", "none")
COLUMN_NAMES = {
    "text": ("text", "sentence", "sentence1", "#1 string", "question1", "premise", "input", "review"),
    "text_pair": ("text_pair", "sentence2", "#2 string", "question2", "hypothesis"),
    "label": ("label", "quality", "class", "target"),
    "score": ("score", "similarity"),
    "prompt": ("prompt", "question", "instruction"),
    "answer": ("answer", "response", "output", "completion"),
}


@dataclass(frozen=True)
class Example:
    text: str | None = None
    text_pair: str | None = None
    label: int | None = None
    score: float | None = None
    prompt: str | None = None
    answer: str | None = None


@dataclass(frozen=True)
class TableFormat:
    """How a CSV or TSV file is read (JSONL files name their fields in every line)."""

    quoting: str = "auto"  # auto | csv | none (module docstring)
    names: tuple[str, ...] = ()  # the columns of a file without a header row, in order; (): line 1 names them
    fields: tuple[tuple[str, str], ...] = ()  # (field, column) pairs where the file does not use COLUMN_NAMES

    def __post_init__(self) -> None:
        if self.quoting not in QUOTINGS:
            raise ConfigError(f"quoting must be one of {', '.join(QUOTINGS)}, got {self.quoting!r}")
        if any(not name.strip() for name in self.names) or len(set(self.names)) != len(self.names):
            raise ConfigError(f"column names must be non-empty and distinct, got {list(self.names)}")
        unknown = [field for field, _ in self.fields if field not in COLUMN_NAMES]
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} (fields: {', '.join(COLUMN_NAMES)})")


def _find_columns(header: list[str], where: str, explicit: dict[str, str] | None) -> dict[str, str]:
    lowered = {name.strip().lower(): name for name in header}
    found: dict[str, str] = {}
    for field, candidates in COLUMN_NAMES.items():
        if explicit and field in explicit:
            if explicit[field] not in header:
                raise DataError(f"{where}: column {explicit[field]!r} for {field} not in header {header}")
            found[field] = explicit[field]
            continue
        for candidate in candidates:
            if candidate in lowered:
                found[field] = lowered[candidate]
                break
    if "text" not in found and "prompt" not in found:
        raise DataError(f"{where}: no text column (looked for {', '.join(COLUMN_NAMES['text'])}; "
                        f"or prompt/answer for chat data) in header {header}" + _no_header_hint(header))
    return found


def _no_header_hint(first_row: list[str]) -> str:
    """How to name the columns of a file whose first line looks like data rather than a header."""
    if len(first_row) < 2 or not any(value.strip().lstrip("-").isdigit() for value in first_row):
        return ""
    guess, texts = [], iter(("text", "text_pair"))
    for index, value in enumerate(first_row, start=1):
        name = f"column{index}"
        if value.strip().lstrip("-").isdigit() and "label" not in guess:
            name = "label"
        elif len(value.split()) > 2:
            name = next(texts, name)
        guess.append(name)
    names = ",".join(guess)
    quoted = ", ".join(f'"{name}"' for name in guess)
    return (f". If line 1 is data (the file has no header row), name its {len(first_row)} columns in order, "
            f"e.g. --header {names} (pacctl finetune) or data.header = [{quoted}] (job file)")


def _example(row: dict, columns: dict[str, str], where: str) -> Example:
    values = {field: row.get(column) for field, column in columns.items()}
    for field in ("text", "text_pair", "prompt", "answer"):
        if field in columns and (values[field] is None or str(values[field]).strip() == ""):
            raise DataError(f"{where}: empty {field} (column {columns[field]!r})")
    label = score = None
    try:
        if values.get("label") not in (None, ""):
            label = int(str(values["label"]).strip())
        if values.get("score") not in (None, ""):
            score = float(str(values["score"]).strip())
    except ValueError as error:
        raise DataError(f"{where}: {error} (label must be an integer class, score a number)") from None
    if "prompt" in columns and "answer" not in columns:
        raise DataError(f"{where}: prompt column without an answer column")
    return Example(
        text=values.get("text"), text_pair=values.get("text_pair"), label=label, score=score,
        prompt=values.get("prompt"), answer=values.get("answer"),
    )


def read_examples(path: str | Path, table: TableFormat = TableFormat(), limit: int | None = None) -> list[Example]:
    """Read a .jsonl, .csv or .tsv file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    explicit = dict(table.fields) or None
    examples: list[Example] = []
    if suffix in (".jsonl", ".json"):
        header = None
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object per line")
                header = header or _find_columns(list(row), f"{path}:{number}", explicit)
                examples.append(_example(row, header, f"{path}:{number}"))
                if limit and len(examples) >= limit:
                    break
    elif suffix in (".tsv", ".csv"):
        header, records = _read_table(path, "\t" if suffix == ".tsv" else ",", table)
        where = f"{path}:1" if not table.names else f"{path} (columns {list(header)})"
        found = _find_columns(header, where, explicit)
        for number, fields in records:
            examples.append(_example(dict(zip(header, fields, strict=True)), found, f"{path}:{number}"))
            if limit and len(examples) >= limit:
                break
    else:
        raise DataError(f"{path}: unknown data format {suffix!r} (use .jsonl, .csv or .tsv)")
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


class _Inconsistent(Exception):
    """A record that does not fit one quoting rule: (line, why)."""

    def __init__(self, line: int, why: str):
        super().__init__(f"line {line}: {why}")
        self.line, self.why = line, why


def _records(text: str, delimiter: str, quoting: str, width: int | None) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each non-empty record under one rule; _Inconsistent where it does not fit."""
    handle = io.StringIO(text, newline="")
    if quoting == "csv":
        reader = csv.reader(handle, delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
    else:
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise _Inconsistent(start, f"{error} (a quoted field must end at a delimiter or a line's end)") from None
        if fields and width is not None and len(fields) != width:
            raise _Inconsistent(start, f"{len(fields)} fields, header has {width}")
        if fields:
            width = len(fields) if width is None else width
            yield start, fields
        start = reader.line_num + 1


RULES = {"csv": "with quoted fields (RFC 4180)", "none": "with quotes as plain text"}


def _read_table(path: Path, delimiter: str, table: TableFormat) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and every record of a CSV/TSV file, read by the quoting rule that fits it."""
    with path.open(encoding="utf-8-sig", newline="") as handle:  # newlines inside quoted fields stay as written
        text = handle.read()
    width = len(table.names) or None
    failures: dict[str, _Inconsistent] = {}
    for quoting in (("csv", "none") if table.quoting == "auto" else (table.quoting,)):
        try:
            records = list(_records(text, delimiter, quoting, width))
        except _Inconsistent as failure:
            failures[quoting] = failure
            continue
        if table.names:
            return list(table.names), records
        if not records:
            raise DataError(f"{path}: empty file")
        (_, header), *rows = records
        return header, rows
    if len(failures) == 1 or len({(f.line, f.why) for f in failures.values()}) == 1:
        failure = next(iter(failures.values()))
        rule = f" (read {RULES[table.quoting]})" if table.quoting != "auto" else ""
        raise DataError(f"{path}:{failure.line}: {failure.why}{rule}")
    tried = "; ".join(f"{RULES[quoting]}, line {f.line}: {f.why}" for quoting, f in failures.items())
    raise DataError(f"{path}: neither quoting rule reads the whole file: {tried}. Mend the line of the rule the "
                    "file follows, or set that rule (--quoting csv|none, data.quoting) to see only its error")


def infer_task(examples: list[Example]) -> str:
    first = examples[0]
    if first.prompt is not None:
        return "lm"
    if first.score is not None and first.label is None:
        return "regression"
    return "classification"
