"""Shared test fixtures and the hypothesis profiles.

Profiles: ``bounded`` (the default, loaded here) keeps property tests inside ``make test``'s budget
(tests that set their own max_examples keep it); ``pytest --hypothesis-profile=long`` draws many more
examples (for the differential attention tests before a release: tens of minutes on 2 cores).
"""

import pytest
import torch
from hypothesis import settings

settings.register_profile("bounded", max_examples=40, deadline=None,
                          print_blob=True)  # the default: bounded for make test
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile("bounded")  # `--hypothesis-profile=NAME` (pytest option) loads another


@pytest.fixture
def one_thread():
    """One intra-op thread for small-model tests: on a shared, oversubscribed CPU, OpenMP threads spinning
    against other processes made tiny matmuls ~7x slower; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
