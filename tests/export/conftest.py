"""Fixtures for the export tests: tiny models of each kind and their torch.export programs (traced once per
session), a SentencePiece vocabulary, and tiny trained translation models (helpers in export_helpers.py)."""

import pytest
import torch
from export_helpers import TEXT, tiny_model, trained_model

from selfattn.data.subword import SubwordConfig, train_subword
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


@pytest.fixture(scope="session")
def sp():
    return train_subword(TEXT, SubwordConfig(vocab_size=80))


@pytest.fixture(scope="session", params=[False, True], ids=["postnorm", "prenorm"])
def translator(request, sp):
    """(model, config) of a tiny trained encoder–decoder; post-norm exports as Marian, pre-norm as Pegasus."""
    torch.set_num_threads(1)
    return trained_model(len(sp), request.param)
