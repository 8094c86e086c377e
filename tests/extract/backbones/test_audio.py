"""Audio backends: log-mel and wav2vec2 (a tiny model saved and loaded through from_pretrained)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from fer.cache.errors import FerError
from fer.extract.backbones.audio import make_audio_extractor
from fer.extract.backbones.mel import MelAudio, mel_filterbank
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError

SR = 16000


def wav(path: Path, seconds: float, freq: float = 440.0, amp: float = 0.5, sr: int = 48000, channels: int = 2) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, 1), sr)
    return path


def video_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        for _ in range(5):
            for p in vs.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    return path


def aac_clip(path: Path, seconds: float = 1.0, sr: int = 44100) -> Path:
    with av.open(str(path), "w") as c:
        st = c.add_stream("aac", rate=sr, layout="stereo")
        t = np.arange(int(seconds * sr)) / sr
        x = np.repeat((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)[None], 2, 0)
        for i in range(0, x.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + 1024]), format="fltp", layout="stereo")
            f.sample_rate, f.pts = sr, i
            for p in st.encode(f):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


# ---------------------------------------------------------------- mel
def test_mel_filterbank_shape_and_peaks():
    fb = mel_filterbank(64, 512, SR)
    assert fb.shape == (64, 257) and fb.dtype == torch.float32
    assert float(fb.min()) == 0.0 and float(fb.max()) <= 1.0 + 1e-6
    assert torch.all(fb.argmax(1)[1:] >= fb.argmax(1)[:-1])  # centres rise with the band index


def test_mel_rows_masks_and_determinism(tmp_path):
    ext = make_audio_extractor("mel")
    assert isinstance(ext, MelAudio)
    assert ext.spec == "audio.mel.64.25ms10ms.16k.3s" and ext.row_shape == (300, 64)
    long = ext.load(ClipRecord("1", audio=wav(tmp_path / "long.wav", 4.0)))
    short = ext.load(ClipRecord("2", audio=wav(tmp_path / "short.wav", 1.0)))
    silent = ext.load(ClipRecord("3", audio=wav(tmp_path / "silent.wav", 1.0, amp=0.0)))
    none = ext.load(ClipRecord("4", video=video_only(tmp_path / "v.mp4")))
    aac = ext.load(ClipRecord("5", video=aac_clip(tmp_path / "a.mp4")))
    items = [long, short, silent, none, aac]
    data, mask = ext.embed(items)
    assert data.shape == (5, 300, 64) and mask.dtype == torch.bool
    assert mask.sum(1).tolist()[:4] == [300, 100, 0, 0]
    assert 100 <= int(mask[4].sum()) <= 110  # 1 s of AAC plus its priming samples
    assert torch.all(data[~mask] == 0) and torch.isfinite(data).all()
    assert ext.row_info(long) == "audio capped to its first 3 s" and ext.row_info(short) is None
    assert ext.row_info(silent) == "silent audio" and ext.row_info(none) == "no audio stream"
    # the 440 Hz tone lands in the band whose centre is nearest 440 Hz
    band = int(data[1, 50].argmax())
    centres = torch.linspace(0, 8000, 257)[mel_filterbank(64, 512, SR).argmax(1)]
    assert abs(float(centres[band]) - 440) < 60
    again, mask2 = ext.embed(items)
    assert torch.equal(data, again) and torch.equal(mask, mask2)
    alone, _ = ext.embed([short])
    assert torch.allclose(alone[0], data[1], atol=1e-5)


def test_bad_audio_is_a_clip_error(tmp_path):
    ext = make_audio_extractor("mel")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ClipError):
        ext.load(ClipRecord("1", video=tmp_path / "empty.mp4"))
    with pytest.raises(ClipError):
        ext.load(ClipRecord("1"))


def test_factory_errors():
    with pytest.raises(FerError, match="unknown audio backend"):
        make_audio_extractor("hubert")
    with pytest.raises(FerError, match="no weights"):
        make_audio_extractor("mel", weights="x.pt")


@pytest.mark.parametrize("kw", [{"size": 64}, {"frames": 8}, {"size": 64, "frames": 8}])
def test_audio_refuses_face_and_pose_options(kw):
    from fer.extract.backbones.registry import make_extractor

    with pytest.raises(FerError, match=r"--(size|frames).*(applies|apply) to face and pose only"):
        make_extractor("audio", "mel", device="cpu", **kw)
    assert make_extractor("audio", "mel", device="cpu", size=None, frames=None).spec.startswith("audio.mel.")


# ---------------------------------------------------------------- wav2vec2
def tiny_config(norm: str = "layer"):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
    )


def save_tiny(folder: Path, norm: str = "layer") -> Path:
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(tiny_config(norm)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=norm == "layer").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_wav2vec2_from_local_folder_and_masked_batching(tmp_path, norm, torch_threads):
    torch_threads(2)
    folder = save_tiny(tmp_path / "tiny-w2v", norm)
    ext = make_audio_extractor("wav2vec2", weights=str(folder))
    assert ext.row_shape == (3, 32)
    assert ext.spec.startswith("audio.wav2vec2.tiny-w2v-") and ext.spec.endswith(".mean.16k")
    prov = ext.provenance()
    assert prov["weights"]["sha256"] and prov["weights"]["id"] == str(folder.resolve())
    short = ext.load(ClipRecord("1", audio=wav(tmp_path / "s.wav", 0.5, freq=300)))
    long = ext.load(ClipRecord("2", audio=wav(tmp_path / "l.wav", 1.3, freq=700)))
    none = ext.load(ClipRecord("3", video=video_only(tmp_path / "v.mp4")))
    data, mask = ext.embed([short, long, none])
    assert data.shape == (3, 3, 32) and mask.tolist() == [[True] * 3, [True] * 3, [False] * 3]
    assert torch.all(data[2] == 0) and torch.isfinite(data).all()
    alone, _ = ext.embed([short])
    assert torch.allclose(alone[0], data[0], atol=1e-4), float((alone[0] - data[0]).abs().max())
    assert not torch.allclose(data[0], data[1], atol=1e-3)


def test_wav2vec2_random_init_is_seeded(tmp_path):
    folder = save_tiny(tmp_path / "tiny")
    a = make_audio_extractor("wav2vec2", weights="none", model=str(folder), seed=1)
    b = make_audio_extractor("wav2vec2", weights="none", model=str(folder), seed=1)
    assert a.spec == "audio.wav2vec2.tiny-none-s1.mean.16k"
    assert a.provenance()["weights"]["id"] == "random, seed 1"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_wav2vec2_missing_model_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FerError) as e:
        make_audio_extractor("wav2vec2", weights="facebook/wav2vec2-large-xlsr-53")
    msg = str(e.value)
    assert "facebook/wav2vec2-large-xlsr-53" in msg and "fer weights fetch" in msg and "\n" not in msg
    with pytest.raises(FerError, match="config.json"):
        make_audio_extractor("wav2vec2", weights=str(tmp_path))
