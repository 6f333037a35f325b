"""Fine-tuning techniques, all built on the same backbone and head so comparisons are like for like.

- parallel: Parallel Adapters, the side network of PAC (pac/side); the backbone never gets a gradient;
- full: every backbone weight trained;
- lora: low-rank updates of the attention projections (Hugging Face PEFT);
- adapters: bottleneck adapters after attention and MLP in every layer (Houlsby et al.).
"""

from pac.techniques.build import TECHNIQUES, TechniqueConfig, build_model

__all__ = ["TECHNIQUES", "TechniqueConfig", "build_model"]
