"""Shared fixtures: tiny models built once per session."""

import pytest
import torch

from .tiny_models import build

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session", params=["llama", "qwen2", "mistral", "gpt2"])
def any_model(request, models_dir):
    return build(request.param, models_dir)


@pytest.fixture(scope="session")
def llama(models_dir):
    return build("llama", models_dir)
