"""One intra-op thread for these small-model tests: on a shared, oversubscribed CPU, OpenMP threads spinning
against other processes made tiny matmuls ~7x slower; results do not depend on it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
