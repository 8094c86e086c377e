"""fer.extract.clip for `fer predict` on a bare video: the face frames it cuts match the run's face set."""

from fer.extract.clip import all_frames_cap, clip_record
from fer.extract.frames import list_frames
from fer.extract.synth import photo as V


def test_a_video_gives_16_faces_or_every_face_up_to_an_all_frame_runs_cap(tmp_path):
    video, _ = V.make_moving(tmp_path / "c.mp4", n=12)
    rec = clip_record(str(video), workdir=tmp_path / "w16", device="cpu")
    assert rec.faces_all is None and len(list_frames(rec.faces16)) == 16  # 12 frames stretched, as DFEW's 16f
    rec = clip_record(str(video), workdir=tmp_path / "all", device="cpu", all_frames=20)
    assert rec.faces16 is None and len(list_frames(rec.faces_all)) == 12  # every frame once, not stretched
    rec = clip_record(str(video), workdir=tmp_path / "cap", device="cpu", all_frames=5)
    assert len(list_frames(rec.faces_all)) == 5


def test_the_cap_comes_from_the_runs_face_provenance():
    assert all_frames_cap({"face": {"provenance": {"frames": "all", "max_frames": 40}}}) == 40
    assert all_frames_cap({"face": {"provenance": {"frames": 16}}}) is None
    assert all_frames_cap({"audio": {"provenance": {}}}) is None
