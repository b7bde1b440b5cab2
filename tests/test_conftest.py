"""The suite-wide fixtures of ``tests/conftest.py``."""

from __future__ import annotations

import torch


def test_one_torch_thread_runs_the_test_on_one_thread(one_torch_thread: None) -> None:
    assert torch.get_num_threads() == 1


def test_the_suite_thread_count_is_restored_after_it(suite_thread_count: int) -> None:
    # Whatever ran before on this process (the test above, when in file order), every fixture gave
    # back the suite's setting.
    assert torch.get_num_threads() == suite_thread_count
