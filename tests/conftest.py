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


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (starting one takes 10-20 s on 2 loaded cores): 2
    CPUs, a small object store, no dashboard, workers' output kept in Ray's logs. Yields its address, which a
    `fer` subprocess joins through RAY_ADDRESS; fer's own sessions in this process use it and leave it be."""
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=160 * 2**20,
             logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
