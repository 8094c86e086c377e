"""Shared test setup: keep torch to the 2 CI cores, never touch the network, and check that no test leaves
a global setting changed (threads, deterministic flags, backends, default dtype, environment, working
folder)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# `--precision auto` gives bf16 on CPUs with native bf16 and fp32 elsewhere; tests compare names and numbers
# that must not depend on the machine, so they run in fp32 unless a test asks for a precision itself
os.environ.setdefault("FER_PRECISION", "fp32")

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny test models: a second torch thread only adds contention on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_threads():
    """``torch_threads(n)`` runs the test with n torch threads; the number is given back after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _flushes_denormals() -> bool:
    # torch.set_flush_denormal has no getter: a denormal float32 times one is zero when denormals are flushed
    return bool((torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() == 0.0)


# set by the tools themselves, not by a test: pytest's note of the running test, and torch's compiler cache
# folder, which torch._inductor sets once per process the first time it runs (a model that uses it, e.g. HF's)
_NOT_SETTINGS = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR")


def global_state() -> dict:
    """The process-wide settings a test could change and leave behind; kernels' results depend on several of
    them (the thread count changes reduction order, TF32 and the matmul precision change the rounding)."""
    m, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return {
        "torch threads": torch.get_num_threads(),
        "deterministic algorithms": (torch.are_deterministic_algorithms_enabled(),
                                     torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn": (cudnn.enabled, cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32),
        "cuda matmul": (m.allow_tf32, m.allow_fp16_reduced_precision_reduction,
                        m.allow_bf16_reduced_precision_reduction),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "mkldnn": torch.backends.mkldnn.enabled,
        "default dtype": torch.get_default_dtype(),
        "grad enabled": torch.is_grad_enabled(),
        "anomaly detection": torch.is_anomaly_enabled(),
        "flush denormal": _flushes_denormals(),
        "numpy errors": np.geterr(),
        "environment": {k: v for k, v in os.environ.items() if k not in _NOT_SETTINGS},
        "working folder": os.getcwd(),
    }


@pytest.fixture(autouse=True)
def global_state_unchanged(request):
    """Fail a test that leaves a global setting changed (one test's leak changes a later test's numbers);
    use monkeypatch, a fixture that restores, or try/finally."""
    before = global_state()
    yield
    after = global_state()
    changed = [k for k in before if before[k] != after[k]]
    if changed:
        env = [k for k in set(before["environment"]) | set(after["environment"])
               if before["environment"].get(k) != after["environment"].get(k)]
        what = ", ".join(f"environment ({', '.join(env)})" if k == "environment"
                         else f"{k} ({before[k]} -> {after[k]})" for k in changed)
        pytest.fail(f"{request.node.nodeid} left global settings changed: {what}", pytrace=False)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (starting one takes 10-20 s on 2 loaded cores): 2
    CPUs, a small object store, no dashboard, workers' output kept in Ray's logs. Yields its address, which a
    `fer` subprocess joins through RAY_ADDRESS; fer's own sessions in this process use it and leave it be."""
    import logging

    import ray

    env = dict(os.environ)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=160 * 2**20,
             logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.environ.clear()  # ray.init sets a few variables of its own (RAY_AUTH_MODE, ...)
        os.environ.update(env)
