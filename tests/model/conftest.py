"""Fixtures shared by the ACE model tests: one intra-op thread, a tiny LCU table."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine they lose a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lcu(tmp_path_factory) -> str:
    """8 LCU rows from two scikit-image photographs (gray, canny, inpaint + mask, 2-turn chain / t2i)."""
    from acedata.demo_lcu import build

    return build(str(tmp_path_factory.mktemp("lcu")), (64, 48), photos=["astronaut", "chelsea"], rows_per_group=2)
