"""Tiny models of each kind and their torch.export programs, traced once per test session."""

import pytest

from export_helpers import tiny_model
from selfattn.export import export_program


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def exported():
    """kind -> (model, ExportedModel) for "encoder", "decoder", "encoder-decoder"."""
    out = {}
    for kind in ("encoder", "decoder", "encoder-decoder"):
        model = tiny_model(kind)
        out[kind] = (model, export_program(model))
    return out
