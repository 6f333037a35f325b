"""Load only part of a backbone: the layers one stage runs, never the whole checkpoint.

The model is built with its parameters on PyTorch's meta device (no memory; buffers such as rotary
frequencies and position ids are built for real, as the model's constructor computes them), the parts a
stage does not run are dropped (`pac.pipeline.backbone_stage.release_outside`), and every parameter left
is read from the checkpoint alone: safetensors files open lazily tensor by tensor, a PyTorch pickle is
memory-mapped, and a GGUF file is memory-mapped and dequantised tensor by tensor with transformers' own
name mapping and tensor fix-ups. So a device's peak memory is its slice, plus one tensor.

The fingerprint (the activation cache's key and the adapter's check) digests the whole model's weights
exactly as `Backbone.fingerprint` does for a model loaded whole; here it streams through the checkpoint one
tensor at a time, and is computed once per file per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from pac.errors import ModelNotFoundError
from pac.models.backbone import Backbone, _model_class
from pac.models.registry import ModelSource, resolve_model

_FINGERPRINTS: dict[tuple, str] = {}
_FINGERPRINTS_LOCK = threading.Lock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside, every parameter a module registers is put on the meta device (shape and dtype, no memory);
    buffers stay real. The same trick as accelerate's `init_empty_weights(include_buffers=False)`."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        original(module, name, parameter)
        if parameter is not None and not parameter.is_meta:
            kwargs = dict(module._parameters[name].__dict__)
            kwargs["requires_grad"] = parameter.requires_grad
            module._parameters[name] = type(parameter)(parameter.to("meta"), **kwargs)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


class Checkpoint:
    """Read named tensors of a model directory's weights one at a time (safetensors, PyTorch or GGUF)."""

    def __init__(self, source: ModelSource, model: nn.Module, config) -> None:
        self.source = source
        directory = source.directory
        if directory is None:
            raise ValueError("a tiny random model has no checkpoint")
        self.files: list[Path] = []
        self._where: dict[str, tuple[Path, str]] = {}  # model key -> (file, key in the file)
        self._gguf = None
        if source.gguf_file:
            self._index_gguf(directory / source.gguf_file, model, config)
        else:
            self._index_files(directory, model)

    # ---- indexing ------------------------------------------------------------------------------
    def _index_files(self, directory: Path, model: nn.Module) -> None:
        from safetensors import safe_open

        stored: dict[str, Path] = {}
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            for key, name in json.loads(index.read_text())["weight_map"].items():
                stored[key] = directory / name
        elif (directory / "model.safetensors").is_file():
            with safe_open(str(directory / "model.safetensors"), "pt") as handle:
                stored = {key: directory / "model.safetensors" for key in handle.keys()}
        elif (directory / "pytorch_model.bin").is_file():
            self._pickle = torch.load(directory / "pytorch_model.bin", map_location="cpu", mmap=True,
                                      weights_only=True)
            stored = {key: directory / "pytorch_model.bin" for key in self._pickle}
        else:
            raise ModelNotFoundError(f"{directory} holds no model.safetensors, model.safetensors.index.json "
                                     "or pytorch_model.bin")
        self.files = sorted(set(stored.values()))
        prefix = getattr(model, "base_model_prefix", "") or ""
        for key in model.state_dict():
            for candidate in (key, f"{prefix}.{key}", key.removeprefix(f"{prefix}.")):
                if candidate in stored:
                    self._where[key] = (stored[candidate], candidate)
                    break

    def _index_gguf(self, path: Path, model: nn.Module, config) -> None:
        from gguf import GGUFReader

        self.files = [path]
        self._processor, self._mapping = _gguf_names(self.identity_of([path]), model, config)
        self._gguf = GGUFReader(str(path))  # memory-mapped: only the tensors read are paged in
        self._gguf_tensors = {tensor.name: tensor for tensor in self._gguf.tensors}
        for gguf_name, key in self._mapping.items():
            if gguf_name in self._gguf_tensors:
                self._where[key] = (path, gguf_name)

    # ---- reading -------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self._where

    def read(self, key: str) -> torch.Tensor:
        """The stored tensor of model key `key`, as the whole-model load would set it (before the dtype)."""
        path, stored = self._where[key]
        if self._gguf is not None:
            import numpy as np
            from gguf import dequantize

            tensor = self._gguf_tensors[stored]
            weights = dequantize(tensor.data, tensor.tensor_type)
            result = self._processor.process(weights=weights, name=stored, tensor_key_mapping=self._mapping,
                                             parsed_parameters={"config": {}, "tensors": {}})
            return torch.from_numpy(np.copy(result.weights))
        if path.suffix == ".bin":
            return self._pickle[stored]
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            return handle.get_tensor(stored)

    def identity(self) -> tuple:
        """What names this checkpoint's bytes: every file's path, size and modification time."""
        return self.identity_of(self.files)

    @staticmethod
    def identity_of(files: list[Path]) -> tuple:
        return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


_GGUF_NAMES: dict[tuple, tuple] = {}


def _gguf_names(identity: tuple, model: nn.Module, config):
    """(tensor processor, GGUF name -> model key) as transformers' GGUF loader makes them (slow to build:
    kept per file). The processor reads the model's config, which holds the GGUF's values."""
    if identity not in _GGUF_NAMES:
        import functools

        import gguf
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
        )

        processor = TENSOR_PROCESSORS.get(config.model_type, TensorProcessor)(config=config.to_dict())
        # The mapping walks every submodule and rebuilds gguf's name table for each (seconds): the table is
        # the same every time, so it is built once while the walk runs (under MODEL_CODE: no other loader).
        original = gguf.get_tensor_name_map
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
        try:
            _GGUF_NAMES[identity] = (processor, get_gguf_hf_weights_map(model, processor))
        finally:
            gguf.get_tensor_name_map = original
    return _GGUF_NAMES[identity]


_READ: dict[tuple, tuple] = {}  # (config or GGUF file, its modification time) -> (config, tokenizer)


def skeleton(source: ModelSource):
    """(model with parameters on meta, tokenizer, config) of a model directory or GGUF file. Config and
    tokenizer are read once per process (a GGUF file's take seconds to parse)."""
    import copy

    import transformers

    from pac.models.tokenizer import HFTokenizer

    kwargs = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    path = source.directory / (source.gguf_file or "config.json")
    key = (str(path), path.stat().st_mtime_ns if path.exists() else 0)
    if key not in _READ:
        try:
            config = transformers.AutoConfig.from_pretrained(source.directory, **kwargs)
            tokenizer = HFTokenizer(transformers.AutoTokenizer.from_pretrained(source.directory, **kwargs))
        except OSError as error:
            raise ModelNotFoundError(f"cannot load model from {source.directory}: {error}") from error
        _READ[key] = (config, tokenizer)
    config, tokenizer = _READ[key]
    config = copy.deepcopy(config)
    with parameters_on_meta():
        model = _model_class(config).from_config(config)
    return model, tokenizer, config


def _names_by_parameter(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return names


def materialise(model: nn.Module, checkpoint: Checkpoint, names: dict[int, list[str]], where: str,
                buffers: bool = True) -> None:
    """Read every parameter of `model` (a whole model or one of its modules) still on meta from the
    checkpoint (tied ones once), in the meta parameter's dtype; empty ones stay empty. `buffers`: `model` is the whole model, whose
    persistent buffers the checkpoint may store too."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for leaf, parameter in list(module._parameters.items()):
            if parameter is None or not parameter.is_meta:
                continue
            if id(parameter) not in made:
                if parameter.numel() == 0:
                    value = torch.empty(parameter.shape, dtype=parameter.dtype)
                else:
                    keys = [k for k in names.get(id(parameter), []) if checkpoint.has(k)]
                    if not keys:
                        raise ModelNotFoundError(f"{where}: the checkpoint holds no "
                                                 f"{' / '.join(names.get(id(parameter), [leaf]))}")
                    value = checkpoint.read(keys[0]).to(parameter.dtype)  # the meta parameter's: the model's
                    if tuple(value.shape) != tuple(parameter.shape):
                        raise ModelNotFoundError(f"{where}: {keys[0]} is {tuple(value.shape)} in the checkpoint, "
                                                 f"the model expects {tuple(parameter.shape)}")
                made[id(parameter)] = nn.Parameter(value, requires_grad=False)
            module._parameters[leaf] = made[id(parameter)]
    for name, buffer in model.named_buffers() if buffers else ():  # persistent ones the checkpoint stores
        if checkpoint.has(name) and not buffer.is_meta:
            buffer.copy_(checkpoint.read(name).to(buffer.dtype))


def load_partial(spec: str, release: Callable[[Backbone], None], dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> Backbone:
    """The backbone `spec` with only what `release` leaves in it read from the checkpoint.

    `release(backbone)` drops what the caller will not run (it sees the whole model, parameters on meta).
    A tiny random model is built whole and then released: it has no checkpoint to read from."""
    from pac.models.backbone import load_backbone
    from pac.models.imports import MODEL_CODE

    source = resolve_model(spec)
    if source.tiny:
        backbone = load_backbone(spec, dtype=dtype, seed=seed)
        backbone.fingerprint()
        release(backbone)
        return backbone
    with MODEL_CODE:
        backbone, checkpoint, names = _on_meta(source, dtype)
        release(backbone)
        materialise(backbone.model, checkpoint, names, str(source.directory / (source.gguf_file or "")))
        return backbone


def _on_meta(source: ModelSource, dtype: torch.dtype) -> tuple[Backbone, Checkpoint, dict[int, list[str]]]:
    """(the backbone with every parameter on meta and its fingerprint known, its checkpoint, the names of
    each parameter). Under MODEL_CODE."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model, tokenizer, config = skeleton(source)
    checkpoint = Checkpoint(source, model, config)
    fingerprint = _fingerprint(checkpoint, model, tokenizer, config)
    names = _names_by_parameter(model)
    model.to(dtype=dtype)
    backbone = Backbone(source.name, model, tokenizer, source)
    backbone._fingerprint = fingerprint
    return backbone, checkpoint, names


class LayerReader:
    """`backbone.open_layer` of a model whose layers stay on meta: a layer's weights are read from the
    checkpoint on entry and dropped (back on meta) on exit."""

    def __init__(self, checkpoint: Checkpoint, names: dict[int, list[str]]) -> None:
        self.checkpoint, self.names = checkpoint, names

    @contextlib.contextmanager
    def open(self, layer: nn.Module):
        saved = [(module, leaf, parameter) for module in layer.modules()
                 for leaf, parameter in module._parameters.items() if parameter is not None and parameter.is_meta]
        materialise(layer, self.checkpoint, self.names, str(self.checkpoint.files[0]), buffers=False)
        try:
            yield layer
        finally:
            for module, leaf, parameter in saved:
                module._parameters[leaf] = parameter


def load_held(spec: str, held: Callable[[Backbone], list[nn.Module]], dtype: torch.dtype = torch.float32,
              seed: int = 0) -> Backbone:
    """The backbone `spec` with only the modules `held(backbone)` names read from the checkpoint; every
    other parameter stays on meta, and `backbone.open_layer(layer)` reads a layer for as long as it is
    used (what the controller needs: the side network is pruned from every layer, one at a time). A tiny
    random model is built whole."""
    from pac.models.backbone import load_backbone
    from pac.models.imports import MODEL_CODE

    source = resolve_model(spec)
    if source.tiny:
        backbone = load_backbone(spec, dtype=dtype, seed=seed)
        backbone.fingerprint()
        return backbone
    with MODEL_CODE:
        backbone, checkpoint, names = _on_meta(source, dtype)
        where = str(source.directory / (source.gguf_file or ""))
        for module in held(backbone):
            materialise(module, checkpoint, names, where, buffers=False)
        backbone.open_layer = LayerReader(checkpoint, names).open
        return backbone


def checkpoint_fingerprint(spec: str) -> str:
    """`Backbone.fingerprint()` of `spec` loaded whole in float32, streamed through its checkpoint."""
    from pac.models.backbone import load_backbone
    from pac.models.imports import MODEL_CODE

    source = resolve_model(spec)
    if source.tiny:
        return load_backbone(spec).fingerprint()
    with MODEL_CODE:
        model, tokenizer, config = skeleton(source)
        return _fingerprint(Checkpoint(source, model, config), model, tokenizer, config)


def _fingerprint(checkpoint: Checkpoint, model: nn.Module, tokenizer, config) -> str:
    key = checkpoint.identity()
    with _FINGERPRINTS_LOCK:
        if key in _FINGERPRINTS:
            return _FINGERPRINTS[key]
    digest = hashlib.sha256(config.model_type.encode())
    state = model.state_dict(keep_vars=True)
    names = _names_by_parameter(model)
    for name, tensor in sorted(state.items()):
        if tensor.is_meta:
            keys = [k for k in names.get(id(tensor), [name]) if checkpoint.has(k)]
            if not keys:
                raise ModelNotFoundError(f"{checkpoint.files[0]}: the checkpoint holds no {name}")
            value = checkpoint.read(keys[0])
        else:
            value = checkpoint.read(name) if checkpoint.has(name) else tensor
        digest.update(name.encode())
        digest.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
    digest.update(tokenizer.fingerprint().encode())
    with _FINGERPRINTS_LOCK:
        _FINGERPRINTS[key] = digest.hexdigest()
    return _FINGERPRINTS[key]
