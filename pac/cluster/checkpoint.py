"""A job's checkpoints: written whole or not at all, checked on reading, refused for another job.

Each checkpoint is a directory `OUT/checkpoint/step-NNNNNNNN/` holding the adapter (side network and
head), the optimiser's state, and `checkpoint.json` (where the job stood, what it was, the size and
SHA-256 of each file). It is written under a temporary name, every file and the directory fsynced, then
renamed into place and the parent fsynced: after a crash or a power loss a checkpoint is either all there
or not there at all. The newest two are kept; reading takes the newest that checks, so a damaged one
(a disk that lied, a file cut short) falls back to the one before. docs/cluster.md, "Resume".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pac.errors import ConfigError, PacError

FORMAT = "pac-checkpoint/1"
KEEP = 2  # checkpoints kept: the newest, and the one before it in case the newest is damaged
FILES = ("adapter.safetensors", "optimizer.safetensors")
OPERATIONAL = ("checkpoint_steps",)  # training keys that do not change what is trained


class CheckpointDamaged(PacError):
    """A checkpoint directory is incomplete or its files do not match what it recorded."""


@dataclass(frozen=True)
class Position:
    """Where a job stands: `epoch` epochs finished and `in_epoch` steps of the next one; `step` steps in all."""

    phase: int  # the phase of the last step taken (1: pipeline, 2: from the cache)
    epoch: int
    step: int
    in_epoch: int = 0


@dataclass
class Commit:
    """A state the job can go on from: where it stood, the trained tensors with the optimiser's (None: the
    initial ones), the phase-1 cache holders (sample key -> node per stage), phase 2's samples per node and
    the nodes holding a copy of each node's phase-2 records (`cache.replicas`)."""

    position: Position
    state: dict[str, torch.Tensor] | None = None
    holders: dict[str, list[str]] = field(default_factory=dict)
    assigned: dict[str, list[str]] = field(default_factory=dict)
    replicas: dict[str, list[str]] = field(default_factory=dict)

    def holders_at(self, address_of: dict[str, str]) -> dict[str, list[str]]:
        """The holders by today's addresses ("" where a device is not among the job's any more)."""
        return {key: [address_of.get(n, "") if n else "" for n in nodes] for key, nodes in self.holders.items()}


@dataclass
class Checkpoint:
    directory: Path
    position: Position
    job_id: str
    identity: dict[str, str]
    holders: dict[str, list[str]] = field(default_factory=dict)  # sample key -> node per stage (phase-1 cache)
    assigned: dict[str, list[str]] = field(default_factory=dict)  # phase 2: node -> its samples' keys
    replicas: dict[str, list[str]] = field(default_factory=dict)  # phase 2: node -> nodes holding a copy
    history: dict = field(default_factory=dict)  # {"steps": [...], "epochs": [...]} up to here

    @classmethod
    def read(cls, directory: Path) -> Checkpoint:
        """The checkpoint in `directory`, every file checked against its recorded size and digest."""
        try:
            info = json.loads((directory / "checkpoint.json").read_text())
        except (OSError, ValueError) as error:
            raise CheckpointDamaged(f"{directory}: checkpoint.json unreadable ({error})") from None
        if info.get("format") != FORMAT:
            raise CheckpointDamaged(f"{directory}: not a checkpoint of this format ({info.get('format')!r})")
        for name, expected in info["files"].items():
            path = directory / name
            size = path.stat().st_size if path.exists() else None
            if size != expected["bytes"]:
                raise CheckpointDamaged(f"{directory}: {name} has {size} bytes, {expected['bytes']} were written")
            if _digest(path) != expected["sha256"]:
                raise CheckpointDamaged(f"{directory}: {name} does not match its recorded SHA-256")
        return cls(directory, Position(**info["position"]), info["job_id"], info["identity"],
                   info.get("holders", {}), info.get("assigned", {}), info.get("replicas", {}),
                   info.get("history", {}))

    def commit(self) -> Commit:
        return Commit(self.position, self.tensors(), self.holders, self.assigned, self.replicas)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trained tensors ("side.*", "head.*", "top.layers.*") and the optimiser's ("opt.*")."""
        from safetensors.torch import load_file

        from pac.techniques.top import state_from_adapter

        out = state_from_adapter(load_file(str(self.directory / "adapter.safetensors")))
        out.update(load_file(str(self.directory / "optimizer.safetensors")))
        return out

    def check_job(self, identity: dict[str, str], source: str) -> None:
        """Refuse to resume a different job: name every key whose value changed."""
        changed = [key for key in sorted(set(self.identity) | set(identity))
                   if self.identity.get(key) != identity.get(key)]
        if not changed:
            return
        said = [f"{key} ({_shown(key, self.identity.get(key))} -> {_shown(key, identity.get(key))})"
                for key in changed]
        raise ConfigError(f"{source}: cannot resume {self.directory}: it is of another job: " + "; ".join(said)
                          + ". Start afresh into another output directory, or undo the change")


def _shown(key: str, value: str | None) -> str:
    if value is None:
        return "absent"
    if key in ("data.train", "data.eval", "model.fingerprint"):
        return f"content {value[:12]}"
    return value


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def job_identity(job, fingerprint: str) -> dict[str, str]:
    """What makes a job this job, key by key: the model and its weights, the data's content, every
    training key that changes what is trained, the cache's precision."""
    identity = {"model.name_or_path": job.model.name_or_path, "model.fingerprint": fingerprint,
                "model.quantization": job.model.quantization, "cache.precision": job.cache.precision}
    for name, value in asdict(job.data).items():
        if name in ("train", "eval"):
            identity[f"data.{name}"] = _digest(Path(value)) if value is not None else "none"
        else:
            identity[f"data.{name}"] = json.dumps(value, default=str)
    for name, value in asdict(job.training).items():
        if name not in OPERATIONAL:
            identity[f"training.{name}"] = json.dumps(value, default=str)
    return identity


def write_checkpoint(root: Path, model, task: str, state: dict[str, torch.Tensor], position: Position,
                     job_id: str, identity: dict[str, str], holders: dict[str, list[str]] | None = None,
                     assigned: dict[str, list[str]] | None = None, history: dict | None = None,
                     replicas: dict[str, list[str]] | None = None) -> Path:
    """Write one checkpoint atomically (see the module's text) and drop all but the newest `KEEP`."""
    from safetensors.torch import save_file

    from pac.adapter import save_adapter
    from pac.techniques.top import load_trained

    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{position.step:08d}"
    partial = root / f".partial-{name}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    load_trained(model, state)
    save_adapter(model, partial / "adapter.safetensors", extra={"task": task})
    save_file({k: v.contiguous() for k, v in state.items() if k.startswith("opt.")},
              str(partial / "optimizer.safetensors"))
    files = {}
    for file in FILES:
        _fsync(partial / file)
        files[file] = {"bytes": (partial / file).stat().st_size, "sha256": _digest(partial / file)}
    info = {"format": FORMAT, "job_id": job_id, "position": asdict(position), "written_unix": time.time(),
            "files": files, "identity": identity, "holders": holders or {}, "assigned": assigned or {},
            "replicas": replicas or {}, "history": history or {}}
    with open(partial / "checkpoint.json", "w") as handle:
        json.dump(info, handle)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(partial)
    final = root / name
    if final.exists():  # the same step written again (a resumed job's first checkpoint): equivalent
        shutil.rmtree(final)
    os.rename(partial, final)
    _fsync(root)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint under `root` that checks, and why each newer one was passed over."""
    problems = []
    for directory in sorted(root.glob("step-*"), reverse=True):
        try:
            return Checkpoint.read(directory), problems
        except (CheckpointDamaged, KeyError, TypeError) as error:
            problems.append(str(error))
    return None, problems


def remove_checkpoints(root: Path) -> None:
    """The job finished: its adapter supersedes the checkpoints."""
    shutil.rmtree(root, ignore_errors=True)
