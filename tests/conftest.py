"""Shared test setup: keep torch to the 2 CI cores and never touch the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# `--precision auto` gives bf16 on CPUs with native bf16 and fp32 elsewhere; tests compare names and numbers
# that must not depend on the machine, so they run in fp32 unless a test asks for a precision itself
os.environ.setdefault("FER_PRECISION", "fp32")

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny test models: a second torch thread only adds contention on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
