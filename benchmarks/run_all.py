"""Run every benchmark one after the other (they share the CPU, so never in parallel); results/ gets the tables."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["bench_store.py", "bench_extract.py", "bench_extract_media.py", "bench_train.py", "bench_stream.py",
           "bench_precision.py", "bench_backbones.py", "bench_faces.py", "bench_augment.py", "bench_ray.py",
           "bench_vit_top.py"]

if __name__ == "__main__":
    for name in SCRIPTS:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / name)], check=True)
