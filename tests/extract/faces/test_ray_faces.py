"""`fer data faces` on a local Ray instance: the same folders, jpgs, manifest and failures as one process."""

import json
from pathlib import Path

from fer.extract.datasets import load_dataset
from fer.extract.faces.detect import MTCNN
from fer.extract.faces.output import FACES_JSON, MANIFEST
from fer.extract.faces.runner import run_faces
from fer.extract.ray_engine import RayEngine
from fer.extract.synth import photo as V


def tree(out: Path) -> dict[str, bytes]:
    """Every file under OUT but faces.json (which holds times), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in (FACES_JSON, ".lock")}


def test_faces_on_ray_match_one_process(tmp_path, ray_local):
    V.make_moving(tmp_path / "v" / "moving.mp4")
    V.make_gaps(tmp_path / "v" / "gaps.mp4")
    V.make_empty(tmp_path / "v" / "empty.mp4")
    (tmp_path / "src.csv").write_text("clip_id,video,label\nmoving,v/moving.mp4,happy\ngaps,v/gaps.mp4,sad\n"
                                      "empty,v/empty.mp4,neutral\n")
    src = load_dataset(tmp_path / "src.csv")
    det = MTCNN()
    one = run_faces(src, tmp_path / "one", size=96, workers=0, progress=False, detector=det)
    engine = RayEngine(actors=(1, 1))
    two = run_faces(src, tmp_path / "ray", size=96, workers=0, progress=False, detector=det, engine=engine)

    counts = [(s.done, s.frames, s.borrowed, s.failed) for s in (one, two)]
    assert counts[0] == counts[1]
    assert one.done == 2 and "no face" in one.failed["empty"] and len(engine.pids) == 1
    assert "ray: local Ray instance" in str(two)
    files = tree(tmp_path / "one")
    assert tree(tmp_path / "ray") == files and MANIFEST in files and "moving/00012.jpg" in files
    a, b = (json.loads((tmp_path / d / FACES_JSON).read_text()) for d in ("one", "ray"))
    for doc in (a, b):
        doc.pop("created"), doc.pop("updated")
    assert a == b
