"""The dtypes a tensor may have on the wire, by their wire names."""

from __future__ import annotations

import torch

from pac.wire.errors import WireError

# Wire names of the dtypes a tensor may have. Floats are what we train in; the integer and bool types
# carry token ids, labels and masks between stages.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of a torch dtype; a WireError for dtypes the wire does not carry."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise WireError(f"dtype {dtype} cannot travel on the wire; supported: {', '.join(DTYPES)}") from None
