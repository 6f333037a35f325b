"""An adapter's metadata is read from the safetensors header alone, and a file that is not one is named."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pac.adapter import NotSafetensors, _safetensors_metadata


def raw(path, header: dict, data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_the_metadata_is_what_safetensors_reads(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"b": torch.zeros(3, 2, dtype=torch.bfloat16), "a": torch.arange(5, dtype=torch.int64)}, str(path),
              metadata={"format": "x", "extra": "{}"})
    with safe_open(str(path), framework="pt") as handle:
        assert _safetensors_metadata(path) == handle.metadata() == {"format": "x", "extra": "{}"}


@pytest.mark.parametrize("header,data,says", [
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "its tensors need"),  # truncated
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "its tensors need"),  # trailing bytes
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "not the 8 bytes from 0"),  # a gap
    ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "not the 12 bytes"),  # wrong size
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": []}}, b"\0" * 8, "takes bytes -1..-1"),
    ({"t": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "no valid dtype and shape"),
    ({"t": [1, 2]}, b"", "no valid dtype and shape"),
    ({"__metadata__": {"format": 1}}, b"", "metadata is not a table of strings"),
])
def test_a_malformed_header_is_named(tmp_path, header, data, says):
    path = tmp_path / "bad.safetensors"
    raw(path, header, data)
    with pytest.raises(NotSafetensors, match=says):
        _safetensors_metadata(path)


def test_what_is_not_safetensors_at_all_is_named(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"abc")
    with pytest.raises(NotSafetensors, match="3 bytes, too short"):
        _safetensors_metadata(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(NotSafetensors, match="its header would be"):
        _safetensors_metadata(path)
    path.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(NotSafetensors, match="not JSON"):
        _safetensors_metadata(path)
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(NotSafetensors, match="not a table"):
        _safetensors_metadata(path)
