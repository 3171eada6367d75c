"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for small-model tests: on a shared, oversubscribed CPU, OpenMP threads spinning
    against other processes made tiny matmuls ~7x slower; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
