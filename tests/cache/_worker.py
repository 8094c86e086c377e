"""A writer process for the crash and concurrency tests (run as a script; not a test module).

usage: _worker.py MODE STORE N SPEC SHARD_K SHARD_N [BATCH [PAUSE_S]]
  write: create/open the store, write every not-done owned row in batches, printing "wrote <k>" per batch
  hold:  open a writer on the shard, print "ready", sleep until killed
  hold-h5: open the store for writing, print "ready", sleep until killed
"""

import sys
import time

import numpy as np

from fer.cache import create_store

T, D = 4, 6
CHUNK_BYTES = 2 * T * D * 2  # two rows per chunk: many chunks, many chances to be killed mid-write


def index(n: int):
    ids = [f"{i + 1:05d}" for i in range(n)]
    votes = (np.arange(n * 7).reshape(n, 7) % 5).astype(np.float32)
    folds = (np.arange(n * 5).reshape(n, 5) % 3).astype(np.int8)
    return ids, votes, folds


def row_values(rows: np.ndarray):
    """Deterministic data per row, so any schedule of writers ends with the same bytes."""
    data = np.stack([np.random.default_rng(int(r)).standard_normal((T, D)) for r in rows]).astype(np.float16)
    mask = np.stack([np.arange(T) <= (r % T) for r in rows])
    return data, mask


def main() -> None:
    mode, path, n, spec = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    k, nsh = int(sys.argv[5]), int(sys.argv[6])
    batch = int(sys.argv[7]) if len(sys.argv) > 7 else 3
    pause = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
    store = create_store(path, *index(n))
    if mode == "hold-h5":
        print("ready", flush=True)
        time.sleep(600)
    w = store.writer(spec, row_shape=(T, D), attrs={"modality": "face"}, shard=(k, nsh), chunk_bytes=CHUNK_BYTES)
    if mode == "hold":
        print("ready", flush=True)
        time.sleep(600)
    todo = w.owned_rows()
    todo = todo[~w.done()[todo]]
    for i in range(0, len(todo), batch):
        rows = todo[i : i + batch]
        data, mask = row_values(rows)
        w.write_rows(rows, data, mask)
        print(f"wrote {i + len(rows)}", flush=True)
        time.sleep(pause)  # stretch the run so a kill lands mid-way (it may land inside a write or here)
    w.close()
    store.close()
    print("finished", flush=True)


if __name__ == "__main__":
    main()
