"""Which modules LoRA adapts, per model type (the `lora` baseline, and the tuned top layers' `attention`)."""

LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "t5": ["q", "v"]}
DEFAULT_LORA_TARGETS = ["q_proj", "v_proj"]
