"""The model: tokens -> Transformer encoder -> flatten -> 2 FC layers -> C logits, over any subset of modalities.

Inputs come as a dict of batch tensors made by `make_batch` from in-memory feature tensors:
face (B, T, D) or layer3 maps (B, T, C, H, W) with --finetune layer4; pose (B, K, 17, 2);
audio (B, 1024) (one wav2vec2 layer) or (B, T, 64) (a mel sequence); each with its mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.train.config import WEIGHTED, TrainConfig
from fer.train.features import ModalityData
from fer.train.layer_mix import LayerMix, audio_rows, check_weighted

AUDIO_DIM = 128
NO_FACE_DIM = 256
"""Token width when the face is not among the modalities (pose/audio tokens are projected to it)."""


def audio_is_sequence(md: ModalityData) -> bool:
    """True for a mel/frame sequence (T, F); False for per-layer pooled wav2vec2 states (L+1, 1024)."""
    name = f"{md.provenance.get('backbone', '')} {md.spec}".lower()
    return "mel" in name


def face_is_maps(md: ModalityData) -> bool:
    """True when the face set holds intermediate maps (N, T, C, H, W) instead of pooled vectors."""
    return md.data.dim() == 5


def audio_layer_index(md: ModalityData, layer: int | None) -> int:
    """The hidden-state index to use; None -> the last; FerError when out of range."""
    n = md.data.shape[1]
    if layer is None:
        return n - 1
    if not -n <= layer < n:
        raise FerError(f"--audio-layer {layer} is out of range: {md.spec} holds hidden states 0..{n - 1}")
    return layer % n


def make_batch(sets: Mapping[str, ModalityData], idx: torch.Tensor, cfg: TrainConfig,
               modalities: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Index one batch out of the (device-resident) feature tensors, cast to float32.

    ``modalities`` (default: the config's) limits which modalities are gathered.
    """
    mods = cfg.modalities if modalities is None else modalities
    out: dict[str, torch.Tensor] = {}
    if "face" in mods:
        face = sets["face"]
        out["face"] = face.data[idx].float()
        out["face_mask"] = face.mask[idx]
    if "pose" in mods:
        pose = sets["pose"]
        out["pose"] = pose.data[idx][..., :2].float()
        out["pose_mask"] = pose.mask[idx]
    if "audio" in mods:
        audio = sets["audio"]
        if audio_is_sequence(audio):
            out["audio"] = audio.data[idx].float()
            out["audio_mask"] = audio.mask[idx]
        elif cfg.audio_layer == WEIGHTED:
            out["audio"], out["audio_mask"] = audio_rows(audio.data, audio.mask, idx)
        else:
            k = audio_layer_index(audio, cfg.audio_layer)
            out["audio"] = audio.data[idx, k].float()
            out["audio_mask"] = audio.mask[idx, k]
    return out


class InputNorm(nn.Module):
    """Per-feature standardisation with the training split's statistics.

    Frozen-backbone features sit on large per-dimension offsets with small between-clip spread
    (random-init ResNet-18: offset ~0.75, spread ~0.14); centring and scaling them lets the encoder
    see the spread from the first step. Kept as buffers, so every checkpoint carries its fold's stats.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Statistics over the valid tokens of ``(x (n, [T,] D), mask (n, [T]))`` chunks (consumed one at a time)."""
        total = torch.zeros((), dtype=torch.float64, device=self.mean.device)
        s1 = torch.zeros_like(self.mean, dtype=torch.float64)
        s2 = torch.zeros_like(s1)
        for x, mask in chunks:
            x = x.reshape(-1, x.shape[-1])[mask.reshape(-1)].double()  # valid tokens first: a smaller copy
            total += x.shape[0]
            s1 += x.sum(0)
            s2 += (x * x).sum(0)
        if total > 0:
            mean = s1 / total
            var = (s2 / total - mean * mean).clamp_min(0)
            self.mean.copy_(mean.float())
            self.std.copy_(var.sqrt().float().clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SequenceAudio(nn.Module):
    """(B, T, F) frames -> two conv1d layers -> masked mean over time -> (B, 128)."""

    def __init__(self, n_in: int, dropout: float):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_in, AUDIO_DIM, 5, padding=2), nn.ReLU(),
            nn.Conv1d(AUDIO_DIM, AUDIO_DIM, 5, padding=2), nn.ReLU(),
        )
        self.out = nn.Sequential(nn.Linear(AUDIO_DIM, AUDIO_DIM), nn.BatchNorm1d(AUDIO_DIM), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, 128)
        m = mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.out(pooled)


def layer_audio(n_in: int, dropout: float) -> nn.Module:
    """One wav2vec2 layer (1024) -> 512 -> 128, with batch norm."""
    return nn.Sequential(
        nn.Linear(n_in, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(512, AUDIO_DIM), nn.BatchNorm1d(AUDIO_DIM), nn.ReLU(),
    )


class FerModel(nn.Module):
    """Tokens of the chosen modalities -> Transformer encoder -> a 2-layer decision network -> C logits.

    fusion none: one modality, as tokens. transformer: every modality as tokens of one encoder. fc: the face
    through the encoder, pose/audio concatenated before the decision network (without a face: the decision
    network over the concatenated pose/audio alone).
    """

    def __init__(self, cfg: TrainConfig, sets: Mapping[str, ModalityData], *, num_classes: int,
                 layer4: nn.Module | None = None):
        super().__init__()
        self.fusion = cfg.fusion
        self.use_face = "face" in cfg.modalities
        self.use_pose = "pose" in cfg.modalities
        self.use_audio = "audio" in cfg.modalities
        self.as_tokens = cfg.fusion in ("none", "transformer")
        fused = self.use_face and len(cfg.modalities) > 1
        self.modality_dropout = cfg.modality_dropout if fused else 0.0
        self.maps = False
        self.layer4, self.face_norm = None, None
        d, n_tokens, extra = NO_FACE_DIM, 0, 0
        if self.use_face:
            face = sets["face"]
            self.maps = face_is_maps(face)
            if self.maps:
                if layer4 is None:
                    raise FerError(f"{face.spec} holds layer3 maps {tuple(face.data.shape[1:])}: train it with --finetune layer4")
                self.layer4 = layer4
                d = 512
            else:
                if layer4 is not None:
                    raise FerError(f"--finetune layer4 needs a face feature set of layer3 maps; {face.spec} holds pooled vectors")
                d = int(face.data.shape[-1])
                self.face_norm = InputNorm(d)
            n_tokens += int(face.data.shape[1])
        elif layer4 is not None:
            raise FerError("--finetune layer4 trains the face backbone: add face to --modalities")
        if self.use_pose:
            k, j = int(sets["pose"].data.shape[1]), int(sets["pose"].data.shape[2])
            self.pose_proj = nn.Linear(j * 2, d)
            if self.as_tokens:
                n_tokens += k
            else:
                extra += k * d
        if self.use_audio:
            audio = sets["audio"]
            self.audio_seq = audio_is_sequence(audio)
            if cfg.audio_layer == WEIGHTED:  # the learned layer mix standardises each layer itself
                check_weighted(audio.spec, audio.data, self.audio_seq)
                n_layers, width = int(audio.data.shape[1]), int(audio.data.shape[-1])
                self.audio_norm = LayerMix(n_layers, width, InputNorm(n_layers * width))
            else:
                self.audio_norm = InputNorm(int(audio.data.shape[-1]))
            self.audio_enc = (SequenceAudio(int(audio.data.shape[-1]), cfg.dropout) if self.audio_seq
                              else layer_audio(int(audio.data.shape[-1]), cfg.dropout))
            if self.as_tokens:
                self.audio_tok = nn.Linear(AUDIO_DIM, d)
                n_tokens += 1
            else:
                extra += AUDIO_DIM
        self.encoder = None
        if n_tokens:
            if d % cfg.heads:
                raise FerError(f"--heads {cfg.heads} does not divide the token width {d}: choose a divisor (e.g. 8)")
            self.pos = nn.Parameter(torch.randn(1, n_tokens, d) * 0.02)
            layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff, cfg.dropout, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.Linear(n_tokens * d + extra, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, num_classes),
        )

    def fit_input_norm(self, chunks: Callable[[str], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Set the face/audio standardisation from the training split: ``chunks(modality)`` yields its stored
        tokens with their masks a chunk at a time (a batch source's norm_chunks), so one chunk is in memory at once.

        Only what is normalised is asked for: layer3 maps (no face_norm) are never read here.
        """
        if self.face_norm is not None:
            self.face_norm.fit(chunks("face"))
        if self.use_audio:
            self.audio_norm.fit(chunks("audio"))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Return (B, C) logits (log-softmax is applied in the loss)."""
        tokens: list[torch.Tensor] = []
        pads: list[torch.Tensor] = []
        extras: list[torch.Tensor] = []
        if self.use_face:
            face, fmask = batch["face"], batch["face_mask"]
            if self.maps:
                b, t = face.shape[:2]
                # a mean over the map, not AdaptiveAvgPool2d: its CUDA backward is nondeterministic
                face = self.layer4(face.flatten(0, 1)).mean(dim=(2, 3)).view(b, t, -1)
            else:
                face = self.face_norm(face)
            keep = fmask.unsqueeze(-1).to(face.dtype)
            if self.training and self.modality_dropout > 0:
                # blank the whole face of some training clips, so the fused model cannot lean on the face
                # alone (it fits small training sets through the face in a few epochs and ignores the rest)
                drop = torch.rand(face.shape[0], 1, 1, device=face.device) < self.modality_dropout
                keep = keep * (~drop).to(face.dtype)
            tokens.append(face * keep)
            pads.append(torch.zeros(fmask.shape, dtype=torch.bool, device=face.device))
        if self.use_pose:
            pm = batch["pose_mask"]
            p = self.pose_proj(batch["pose"].flatten(2)) * pm.unsqueeze(-1).to(batch["pose"].dtype)
            if self.as_tokens:
                tokens.append(p)
                pads.append(~pm)
            else:
                extras.append(p.flatten(1))
        if self.use_audio:
            am = batch["audio_mask"]
            x = self.audio_norm(batch["audio"])
            if self.audio_seq:
                a = self.audio_enc(x, am)
                am = am.any(dim=1)
            else:
                a = self.audio_enc(x)
            a = a * am.unsqueeze(-1).to(a.dtype)
            if self.as_tokens:
                tokens.append(self.audio_tok(a).unsqueeze(1))
                pads.append(~am.unsqueeze(1))
            else:
                extras.append(a)
        parts = extras
        if self.encoder is not None:
            h = torch.cat(tokens, dim=1) + self.pos
            pad = torch.cat(pads, dim=1)
            # a clip with every token absent (no person, no audio) attends to its empty tokens rather than to
            # nothing, which would give NaN
            pad = pad & ~pad.all(dim=1, keepdim=True)
            h = self.encoder(h, src_key_padding_mask=pad if pad.any() else None)
            h = h.masked_fill(pad.unsqueeze(-1), 0.0)
            parts = [h.flatten(1), *extras]
        return self.head(torch.cat(parts, dim=1))


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _weights_info(provenance: Mapping[str, Any]) -> tuple[str, str | None]:
    w = provenance.get("weights", "none")
    if isinstance(w, Mapping):
        return str(w.get("id") or "none"), w.get("sha256")
    return str(w or "none"), provenance.get("weights_sha256")


def build_backbone(provenance: Mapping[str, Any], log: Callable[[str], None] = print) -> nn.Module:
    """The ResNet-18 the layer3 cache was made with (its layer4 is then fine-tuned).

    The provenance's weights id names them, as fer.extract records it: ``random, seed S`` (random init:
    torch.manual_seed(S) then resnet18()), ``torchvision:ResNet18_Weights.NAME`` (the torch hub cache,
    offline), or a local file path (state dict, or a checkpoint with a ``backbone``/``model``/``state_dict``
    entry), checked against the recorded sha256.
    """
    import re

    from torchvision.models import ResNet18_Weights, resnet18

    wid, sha = _weights_info(provenance)
    if wid.lower() in ("none", "random", "") or wid.lower().startswith("random"):
        m = re.search(r"seed\s*(-?\d+)", wid)
        seed = int(m.group(1)) if m else int(provenance.get("seed", 0) or 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = resnet18(weights=None)
        log(f"layer4: random init (seed {seed}), as the cache's backbone was")
        return net
    path = Path(wid).expanduser()
    if path.is_file():
        if sha:
            from fer.cache.provenance import sha256_file

            if sha256_file(path) != sha:
                raise FerError(f"{path} changed since the cache was made (sha256 differs): "
                               "restore the original weights file or re-extract the layer3 features")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("backbone", "state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
        state = {_strip_prefix(k): v for k, v in state.items()}
        net = resnet18(weights=None)
        missing, _ = net.load_state_dict(state, strict=False)
        if any(k.startswith("layer4.") for k in missing):
            raise FerError(f"{path} holds no ResNet-18 layer4 weights: the cache's provenance names the wrong file")
        log(f"layer4: initialised from {path}")
        return net
    name = wid.split(".")[-1] if wid.startswith("torchvision:") else wid
    name = "IMAGENET1K_V1" if name.lower() in ("imagenet", "default") else name
    try:
        net = resnet18(weights=ResNet18_Weights[name])
    except Exception as e:  # offline without the cached file, or an unknown id
        raise FerError(f"cannot load the ResNet-18 weights {wid} the cache was made with ({type(e).__name__}): "
                       "run `fer weights fetch` on a machine with internet and copy TORCH_HOME here") from None
    log(f"layer4: initialised from torchvision {name}")
    return net
