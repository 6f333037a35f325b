"""The number formats a job can choose, in one place (imports nothing, so the CLI and job file can use it).

pac.quant, pac.cache.codec and pac.train.loop implement them; pac.jobfile, the CLI and the planner name
them from here.
"""

QUANTIZATIONS = ("none", "bf16", "fp16", "int8", "int4")  # of the frozen backbone (pac.quant)
WEIGHT_BITS = {"none": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4": 4}  # as the runtime holds the backbone
CACHE_PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # of the activation cache (pac.cache.codec)
CACHE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}  # per element of a cached hidden state
SIDE_PRECISIONS = ("fp32", "bf16")  # of the side network's arithmetic (pac.train.loop)
ALLREDUCE_PRECISIONS = ("fp32", "bf16", "fp16")  # gradients on the AllReduce's wire, summed in fp32 (pac.collective)

# The backbone's last layers tuned beside the side network (pac.techniques.top): how, and on which layers.
TOP_TUNINGS = ("lora", "full")  # LoRA factors, or every weight of the tuned layers
TOP_TARGETS = ("all", "attention")  # LoRA on every linear layer of the tuned layers, or on q and v only
# What `pacctl finetune` and `pacctl train` do unless told otherwise (docs/accuracy.md): tune the backbone's
# last 3 layers (LoRA on every linear layer) with no side network, from the activation cache after epoch 1;
# a quantised backbone (its layers cannot train) keeps the side network alone. A model whose last stack has
# fewer layers tunes all of them.
DEFAULT_TOP_LAYERS = 3


def default_top_layers(quantization: str) -> int:
    return DEFAULT_TOP_LAYERS if quantization == "none" else 0


_SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2,
               "GIB": 1024**3, "TIB": 1024**4}


def parse_size(value, key: str = "memory_budget") -> int:
    """Bytes from an int or a string like "512MiB", "4 GiB", "2GB"."""
    import re

    from pac.errors import ConfigError

    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ConfigError(f"{key}: cannot read {value!r} as a size (write e.g. 4GiB, 512MiB or bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
