"""Read examples from JSONL, CSV or TSV files.

An example is one text, a text pair, a label or a score, or a prompt/answer pair for a chat model.
Columns are found by name (see COLUMN_NAMES) or given explicitly. TSV is read with quoting off, since
real corpora (GLUE MRPC) hold unbalanced double quotes; a UTF-8 byte order mark is ignored.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from pac.errors import DataError

COLUMN_NAMES = {
    "text": ("text", "sentence", "sentence1", "#1 string", "question1", "premise", "input"),
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
                        f"or prompt/answer for chat data) in header {header}")
    return found


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


def read_examples(path: str | Path, columns: dict[str, str] | None = None, limit: int | None = None) -> list[Example]:
    """Read a .jsonl, .csv or .tsv file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    examples: list[Example] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if suffix in (".jsonl", ".json"):
            header = None
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object per line")
                header = header or _find_columns(list(row), f"{path}:{number}", columns)
                examples.append(_example(row, header, f"{path}:{number}"))
                if limit and len(examples) >= limit:
                    break
        elif suffix in (".tsv", ".csv"):
            reader = (csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if suffix == ".tsv"
                      else csv.reader(handle))
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file")
            found = _find_columns(header, f"{path}:1", columns)
            for number, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise DataError(f"{path}:{number}: {len(fields)} fields, header has {len(header)}")
                examples.append(_example(dict(zip(header, fields, strict=True)), found, f"{path}:{number}"))
                if limit and len(examples) >= limit:
                    break
        else:
            raise DataError(f"{path}: unknown data format {suffix!r} (use .jsonl, .csv or .tsv)")
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def infer_task(examples: list[Example]) -> str:
    first = examples[0]
    if first.prompt is not None:
        return "lm"
    if first.score is not None and first.label is None:
        return "regression"
    return "classification"
