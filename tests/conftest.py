"""Fixtures shared by several test modules."""

import pytest
import torch

# bootstrap_world's helpers assert row for row; rewritten, a failure shows the values, as in a test
pytest.register_assert_rewrite("bootstrap_world")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP's spinning
    workers made a training step 40x slower; restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
