"""benchmarks/bench_gpu.py runs anywhere: without CUDA it says so in one line and exits 0."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_bench_gpu_without_cuda_is_one_line_and_exit_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, str(BENCH), "--out", str(tmp_path / "gpu.md")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().count("\n") == 0 and "no CUDA device" in p.stdout and "Traceback" not in p.stderr
    assert not (tmp_path / "gpu.md").exists()
