"""The adapters a daemon serves: deployed into its state directory, each with a record of where it came from.

`models/<id>.safetensors` is the adapter file as `pacctl train` / `pacctl finetune` wrote it and
`models/<id>.json` its record (`Deployed`); both are owner-only and written atomically. The id is the
first 12 hex digits of the file's SHA-256, so deploying the same adapter twice updates its record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pac.adapter import NotSafetensors, read_metadata
from pac.errors import AdapterMismatchError, ModelNotFoundError, PacError
from pac.formats import QUANTIZATIONS
from pac.security.files import ensure_private_dir, write_private

TASKS = {"lm": "chat", "classification": "classification", "regression": "regression"}  # head task -> served
MAX_ADAPTER_BYTES = 2 * 1024**3


class DeployError(PacError):
    """An adapter sent to be deployed is not what its header says, or not an adapter."""


@dataclass(frozen=True)
class Provenance:
    """What the sender says about an adapter: its name, the quantisation it was trained at, where it came from."""

    name: str = ""
    quantization: str = ""  # "": as the adapter's metadata says (else "none")
    labels: tuple[str, ...] = ()
    job_id: str = ""
    trained_at_unix: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployed:
    """One adapter this daemon serves."""

    id: str
    name: str
    backbone: str
    backbone_fingerprint: str
    quantization: str
    task: str  # chat | classification | regression
    labels: tuple[str, ...]
    job_id: str
    trained_at_unix: float
    deployed_at_unix: float
    metrics: dict[str, float]
    size_bytes: int


class ModelStore:
    """The deployed adapters under `root` (the daemon's state directory / models)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, model: Deployed) -> Path:
        return self.root / f"{model.id}.safetensors"

    def list(self) -> list[Deployed]:
        """Every deployed adapter, newest first (a record that cannot be read is skipped)."""
        found = []
        for record in self.root.glob("*.json") if self.root.is_dir() else ():
            try:
                data = json.loads(record.read_text())
                found.append(Deployed(**{**data, "labels": tuple(data["labels"])}))
            except (OSError, ValueError, TypeError, KeyError):
                continue
        return sorted(found, key=lambda m: m.deployed_at_unix, reverse=True)

    def find(self, wanted: str, tasks: tuple[str, ...]) -> Deployed:
        """The adapter named `wanted` (an id, an id's prefix or a name; empty: the newest of `tasks`)."""
        models = [m for m in self.list() if m.task in tasks]
        matches = [m for m in models if not wanted or m.id.startswith(wanted) or m.name == wanted]
        if not matches:
            known = ", ".join(f"{m.id} ({m.name}, {m.task})" for m in self.list()) or "none"
            what = f"model {wanted!r}" if wanted else f"a {' or '.join(tasks)} model"
            raise ModelNotFoundError(f"this device serves no {what}; deployed: {known} (pacctl deploy)")
        return matches[0]

    def add(self, data: bytes, size_bytes: int, sha256: str, about: Provenance,
            check_backbone: Callable[[str, str, str], None]) -> tuple[Deployed, bool]:
        """Keep the adapter `data` (checked against its size and digest, and by `check_backbone(name,
        fingerprint, quantization)` against the device's model store). Returns it and whether it was deployed before."""
        if len(data) != size_bytes:
            raise DeployError(f"the adapter is {len(data)} bytes, its header says {size_bytes}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise DeployError(f"the adapter's SHA-256 is {digest[:16]}..., its header says {sha256[:16]}...: it "
                              f"was damaged on the way; send it again")
        ensure_private_dir(self.root)
        staged = self.root / f".{digest[:12]}.incoming"
        write_private(staged, data)
        try:
            metadata, head = _read(staged)
            quantization = about.quantization or _extra(metadata).get("quantization") or "none"
            if quantization not in QUANTIZATIONS:
                raise DeployError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
            check_backbone(metadata["backbone_name"], metadata["backbone_fingerprint"], quantization)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        staged.replace(self.root / f"{digest[:12]}.safetensors")
        labels = about.labels or tuple(str(i) for i in range(head.get("num_labels", 0))
                                       if head["task"] == "classification")
        model = Deployed(
            id=digest[:12], name=about.name or digest[:12], backbone=metadata["backbone_name"],
            backbone_fingerprint=metadata["backbone_fingerprint"], quantization=quantization,
            task=TASKS[head["task"]], labels=labels, job_id=about.job_id, trained_at_unix=about.trained_at_unix,
            deployed_at_unix=time.time(), metrics=dict(about.metrics), size_bytes=len(data))
        record = self.root / f"{model.id}.json"
        replaced = record.exists()
        write_private(record, json.dumps(dataclasses.asdict(model), indent=2).encode())
        return model, replaced


def _read(path: Path) -> tuple[dict, dict]:
    """An adapter file's metadata and head config; DeployError if it is not a PAC adapter."""
    try:
        metadata = read_metadata(path)
        head = json.loads(metadata["head_config"])
        metadata["backbone_name"], metadata["backbone_fingerprint"]  # noqa: B018 - both must be there
    except AdapterMismatchError as error:
        raise DeployError(str(error)) from None
    except (OSError, NotSafetensors) as error:
        raise DeployError(f"not an adapter file (safetensors): {error}") from None
    except (KeyError, ValueError) as error:
        raise DeployError(f"the adapter's metadata is incomplete ({error})") from None
    if head.get("task") not in TASKS:
        raise DeployError(f"the adapter's task {head.get('task')!r} is not one a daemon serves ({', '.join(TASKS)})")
    return metadata, head


def _extra(metadata: dict) -> dict:
    try:
        extra = json.loads(metadata.get("extra", "{}"))
    except ValueError:
        return {}
    return extra if isinstance(extra, dict) else {}
