"""Save a trained Parallel Adapter alone (safetensors) and re-attach it to its backbone.

The file holds the side network and head weights, plus metadata: the format version, the backbone's
name and weight fingerprint, the side network's shape (SideSpec) and the head's config. Loading refuses
an adapter whose backbone fingerprint differs from the backbone it is attached to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from pac.errors import AdapterMismatchError

if TYPE_CHECKING:  # the model code (PyTorch) is imported by what saves or loads weights, not by read_metadata
    from pac.techniques.build import ParallelAdaptersModel

FORMAT = "pac-parallel-adapter/1"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


class NotSafetensors(ValueError):
    """The file is not a safetensors file (too short, or its header is not what the format says)."""


def save_adapter(model: ParallelAdaptersModel, path: str | Path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"side.{k}": v.detach().cpu().contiguous() for k, v in model.side.state_dict().items()}
    tensors.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()})
    if model.top is not None:
        tensors.update({f"top.{k}": v.detach().cpu().contiguous() for k, v in model.top.trained_state().items()})
    name, fingerprint = model.backbone_identity()
    metadata = {
        "format": FORMAT,
        "backbone_name": name,
        "backbone_fingerprint": fingerprint,
        "side_spec": json.dumps(model.side.spec.to_dict()),
        "head_config": json.dumps(dataclasses.asdict(model.head.config)),
        "extra": json.dumps(extra or {}),
    }
    if model.top is not None:
        top = model.top
        metadata["top_layers"] = json.dumps({"count": top.count, "tuning": top.tuning, "rank": top.rank,
                                              "alpha": top.alpha, "targets": top.targets})
    temporary = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)  # never leave a half-written adapter behind
    return path


DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _safetensors_metadata(path: str | Path) -> dict:
    """The string metadata of a safetensors file, read from its header alone (an 8-byte little-endian
    length, then that much JSON: each tensor's dtype, shape and byte range, which must tile the rest of
    the file exactly); NotSafetensors naming what is wrong if the file is not one."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        start = handle.read(8)
        if len(start) < 8:
            raise NotSafetensors(f"{path}: {size} bytes, too short")
        (length,) = struct.unpack("<Q", start)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise NotSafetensors(f"{path}: its header would be {length} bytes, the file has {size}")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise NotSafetensors(f"{path}: its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise NotSafetensors(f"{path}: its header is not a table")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise NotSafetensors(f"{path}: its metadata is not a table of strings")
    end = 0
    for name, entry in sorted(header.items(), key=lambda item: _offsets(item[1])[0]):
        begin, stop = _offsets(entry)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (shape is None or entry.get("dtype") not in DTYPE_BYTES or not isinstance(shape, list)
                or not all(isinstance(n, int) and n >= 0 for n in shape)):
            raise NotSafetensors(f"{path}: tensor {name!r} has no valid dtype and shape")
        count = DTYPE_BYTES[entry["dtype"]]
        for n in shape:
            count *= n
        if begin != end or stop - begin != count:
            raise NotSafetensors(f"{path}: tensor {name!r} takes bytes {begin}..{stop}, not the {count} bytes "
                                 f"from {end} its dtype and shape need")
        end = stop
    if end != size - 8 - length:
        raise NotSafetensors(f"{path}: {size} bytes, its tensors need {8 + length + end}")
    return metadata


def _offsets(entry) -> tuple[int, int]:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return (-1, -1)
    return offsets[0], offsets[1]


def read_metadata(path: str | Path) -> dict:
    metadata = _safetensors_metadata(path)
    if metadata.get("format") != FORMAT:
        raise AdapterMismatchError(f"{path}: not a PAC adapter (format {metadata.get('format')!r})")
    return metadata


def load_side_model(path: str | Path, lm_head=None) -> ParallelAdaptersModel:
    """The side network and head alone, with no backbone: what epochs from the activation cache train.

    `lm_head` (the backbone's frozen LM head) is needed only for language-model adapters."""
    from safetensors.torch import load_file

    from pac.heads import Head, HeadConfig
    from pac.side.network import SideNetwork, SideSpec
    from pac.techniques.build import ParallelAdaptersModel

    metadata = read_metadata(path)
    spec = SideSpec.from_dict(json.loads(metadata["side_spec"]))
    head_config = HeadConfig(**json.loads(metadata["head_config"]))
    tensors = load_file(str(path))
    side = SideNetwork(spec)
    side.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("side.")})
    head = Head(head_config, spec.hidden_size, spec.family, lm_head)
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    model = ParallelAdaptersModel(None, side, head)
    model._identity = (metadata["backbone_name"], metadata["backbone_fingerprint"])
    return model


def tuned_top_layers(path: str | Path) -> dict | None:
    """The adapter's tuned top layers ({count, tuning, rank, alpha}), or None: the side network alone."""
    text = read_metadata(path).get("top_layers")
    return json.loads(text) if text else None


def load_adapter(path: str | Path, backbone) -> ParallelAdaptersModel:
    """Re-attach a saved adapter to `backbone`; refuses a backbone with other weights."""
    metadata = read_metadata(path)
    if metadata["backbone_fingerprint"] != backbone.fingerprint():
        raise AdapterMismatchError(
            f"{path} was trained on backbone {metadata['backbone_name']!r} "
            f"(fingerprint {metadata['backbone_fingerprint'][:12]}), not on {backbone.name!r} "
            f"(fingerprint {backbone.fingerprint()[:12]})"
        )
    lm = backbone.lm_head() if json.loads(metadata["head_config"])["task"] == "lm" else None
    model = load_side_model(path, lm)
    dtype = backbone.trainable_dtype
    model.side.to(backbone.device, dtype)
    model.head.to(backbone.device, dtype)
    model.backbone = backbone
    top = tuned_top_layers(path)
    if top is not None:  # the tuned layers go into this backbone's own modules: it serves this adapter alone
        from safetensors.torch import load_file

        from pac.techniques.top import TopLayers

        model.top = TopLayers(backbone, top["count"], top["tuning"], top["rank"], top["alpha"],
                              top.get("targets", "attention"))
        tensors = {k[4:]: v for k, v in load_file(str(path)).items() if k.startswith("top.")}
        missing = set(model.top.trained_state()) - set(tensors)
        if missing:
            raise AdapterMismatchError(f"{path}: the tuned top layers lack {len(missing)} tensors "
                                       f"(e.g. {sorted(missing)[0]})")
        model.top.layers.load_state_dict(tensors, strict=False)
        model.top.to(backbone.device)
    return model


def adapter_extra(path: str | Path) -> dict:
    return json.loads(read_metadata(path).get("extra", "{}"))


