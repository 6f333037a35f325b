"""The on-disk activation cache of one (backbone, taps, quantisation, tokenizer, precision).

Layout of a cache directory (0700; files 0600):

    records.bin     the records, appended; a record is the encoded tensors of one sample, back to back
    index.jsonl     one line per record: sample key, offset, length, CRC-32 and tensor shapes
    manifest.json   what the cache is (its key and precision) and its sizes; rewritten on flush

A record whose CRC does not match is reported (CacheCorruption) and never decoded; the trainer then
recomputes it from the backbone and appends a fresh copy. A torn last index line or a record past the
end of records.bin (a job killed mid-write) is ignored. Reads are streamed (os.pread into a buffer) or
memory-mapped (pages dropped after each read so the resident set stays flat).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pac.cache.codec import check_precision, decode, decode_into, encode, encoded_size
from pac.errors import ConfigError, PacError

FORMAT = "pac-activation-cache/1"


class CacheCorruption(PacError):
    """A cached record failed its checksum."""


@dataclass(frozen=True)
class CacheKey:
    """What the cached states depend on, besides the sample's own token ids."""

    model_fingerprint: str  # digest of the backbone's weights
    taps: tuple[tuple[int, ...], ...]  # per stack, the hidden states kept (h_i indices)
    quantization: str  # of the backbone when the states were computed
    tokenizer_fingerprint: str
    final: int | None = -1  # the stack whose final state follows the taps (None: none; -1: the last stack's)

    def digest(self) -> str:
        fields = asdict(self)
        if fields["final"] == -1:
            del fields["final"]  # the usual record: digests as before the field existed (kept caches stay valid)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def sample_key(input_ids, decoder_ids=None) -> str:
    digest = hashlib.sha256(torch.as_tensor(list(input_ids), dtype=torch.int64).numpy().tobytes())
    if decoder_ids is not None:
        digest.update(b"|decoder|")
        digest.update(torch.as_tensor(list(decoder_ids), dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()[:40]


def _private_open(path: Path, flags: int) -> int:
    return os.open(path, flags | os.O_CREAT, 0o600)


class ActivationCache:
    def __init__(self, root: str | Path, key: CacheKey, precision: str = "fp16", read_mode: str = "stream",
                 keep: bool = False) -> None:
        if read_mode not in ("stream", "mmap"):
            raise ConfigError(f"cache read_mode must be stream or mmap, got {read_mode!r}")
        self.key, self.precision, self.read_mode, self.keep = key, check_precision(precision), read_mode, keep
        self.directory = Path(root) / f"{key.digest()[:32]}-{precision}"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        self._data_path = self.directory / "records.bin"
        self._fd = _private_open(self._data_path, os.O_RDWR | os.O_APPEND)
        self._index_file = os.fdopen(_private_open(self.directory / "index.jsonl", os.O_WRONLY | os.O_APPEND), "a")
        self._index: dict[str, dict] = {}
        self._mmap: mmap.mmap | None = None
        self.corrupt_found = 0
        self._load_index()

    # ---- index ---------------------------------------------------------------------------------
    def _load_index(self) -> None:
        size = os.fstat(self._fd).st_size
        path = self.directory / "index.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if entry["offset"] + entry["length"] <= size:
                self._index[entry["key"]] = entry

    def __contains__(self, sample: str) -> bool:
        return sample in self._index

    def __len__(self) -> int:
        return len(self._index)

    # ---- write ---------------------------------------------------------------------------------
    def put(self, sample: str, tensors: list[torch.Tensor]) -> None:
        """Store one sample's states: a list of [tokens, width] tensors."""
        self.put_raw(sample, b"".join(encode(t, self.precision) for t in tensors), [tuple(t.shape) for t in tensors])

    def put_raw(self, sample: str, record: bytes, shapes: list[tuple[int, int]]) -> None:
        """Store a record already encoded at this cache's precision (e.g. pieces joined from other
        devices' shards: a record is its tensors' encodings back to back, so records concatenate)."""
        expected = sum(encoded_size(self.precision, tokens, width) for tokens, width in shapes)
        if len(record) != expected:
            raise CacheCorruption(f"cache record {sample[:12]}: {len(record)} bytes, its shapes need {expected}")
        shapes = [tuple(shape) for shape in shapes]
        offset = os.fstat(self._fd).st_size
        os.write(self._fd, record)
        entry = {"key": sample, "offset": offset, "length": len(record), "crc32": zlib.crc32(record),
                 "shapes": shapes}
        self._index_file.write(json.dumps(entry) + "\n")
        self._index[sample] = entry
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def flush(self) -> None:
        self._index_file.flush()
        os.fsync(self._index_file.fileno())
        os.fsync(self._fd)
        manifest = {
            "format": FORMAT, "key": asdict(self.key), "precision": self.precision, "records": len(self._index),
            "data_bytes": os.fstat(self._fd).st_size,
            "record_bytes": sum(e["length"] for e in self._index.values()),
        }
        manifest["bytes_per_record"] = manifest["record_bytes"] / max(1, manifest["records"])
        temporary = self.directory / "manifest.json.tmp"
        fd = _private_open(temporary, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as handle:
            json.dump(manifest, handle, indent=1)
        os.replace(temporary, self.directory / "manifest.json")

    def manifest(self) -> dict:
        self.flush()
        return json.loads((self.directory / "manifest.json").read_text())

    # ---- read ----------------------------------------------------------------------------------
    def _read(self, offset: int, length: int) -> bytes:
        if self.read_mode == "stream":
            return os.pread(self._fd, length, offset)
        if self._mmap is None:
            self._mmap = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        data = bytes(self._mmap[offset:offset + length])
        start = offset - offset % mmap.PAGESIZE
        self._mmap.madvise(mmap.MADV_DONTNEED, start, offset + length - start)
        return data

    def shapes(self, sample: str) -> list[tuple[int, int]]:
        return [tuple(shape) for shape in self._index[sample]["shapes"]]

    def _checked(self, sample: str) -> tuple[dict, bytes]:
        entry = self._index[sample]
        record = self._read(entry["offset"], entry["length"])
        if len(record) != entry["length"] or zlib.crc32(record) != entry["crc32"]:
            self.corrupt_found += 1
            del self._index[sample]  # never read again; the trainer recomputes and re-appends it
            raise CacheCorruption(f"cache record {sample[:12]} in {self._data_path} failed its checksum")
        return entry, record

    def read_into(self, sample: str, outs: list) -> None:
        """Check the record, then decode its tensors into `outs` (float32 numpy arrays of their shapes)."""
        entry, record = self._checked(sample)
        position = 0
        for (tokens, width), out in zip(entry["shapes"], outs, strict=True):
            size = encoded_size(self.precision, tokens, width)
            decode_into(memoryview(record)[position:position + size], self.precision, out)
            position += size

    def get_raw(self, sample: str) -> tuple[bytes, list[tuple[int, int]]]:
        """The checked, still encoded record and its tensors' shapes (to send to another device)."""
        entry, record = self._checked(sample)
        return record, [tuple(shape) for shape in entry["shapes"]]

    def get(self, sample: str) -> list[torch.Tensor]:
        entry, record = self._checked(sample)
        tensors, position = [], 0
        for tokens, width in entry["shapes"]:
            size = encoded_size(self.precision, tokens, width)
            tensors.append(decode(memoryview(record)[position:position + size], self.precision, tokens, width))
            position += size
        return tensors

    # ---- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, then remove the cache unless it is kept (it holds derived personal data)."""
        if self._fd < 0:
            return
        if self.keep:
            self.flush()
        if self._mmap is not None:
            self._mmap.close()
        self._index_file.close()
        os.close(self._fd)
        self._fd = -1
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ActivationCache:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
