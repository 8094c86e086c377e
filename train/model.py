"""The model: tokens -> Transformer encoder -> flatten -> 2 FC layers -> C logits, over any subset of modalities.

Inputs come as a dict of batch tensors made by `make_batch` from in-memory feature tensors:
face (B, T, D), or cut inside its backbone with --finetune: layer3 maps (B, T, C, H, W), a ViT's tokens
(B, T, tokens, D) (the top, fer.train.tops, makes each frame's vector), or every block's pooled vector
(B, T, L + 1, D) of `--layer all` (--face-layer picks one or mixes them); pose (B, K, 17, 2);
audio (B, 1024) (one wav2vec2 layer) or (B, T, 64) (a mel sequence); each with its mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from fer.cache.errors import FerError
from fer.train.config import WEIGHTED, TrainConfig
from fer.train.features import ModalityData
from fer.train.layer_mix import LayerMix, audio_rows, check_weighted, frame_rows
from fer.train.tops import ResNetTop, face_cut

AUDIO_DIM = 128
NO_FACE_DIM = 256
"""Token width when the face is not among the modalities (pose/audio tokens are projected to it)."""
TOP_NORM_FRAMES = 4096
"""Frames of the training split whose top outputs set the standardisation of a ViT top (a sample is
enough)."""


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
        self.out = nn.Sequential(nn.Linear(AUDIO_DIM, AUDIO_DIM), nn.BatchNorm1d(AUDIO_DIM), nn.ReLU(),
                                 nn.Dropout(dropout))

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
                 top: nn.Module | None = None, layer4: nn.Module | None = None):
        """``top`` (fer.train.tops) turns each frame of a face set cut inside its backbone into a vector and
        trains with the rest; ``layer4`` is ResNet-18's layer4 as such a top."""
        super().__init__()
        self.fusion = cfg.fusion
        self.use_face = "face" in cfg.modalities
        self.use_pose = "pose" in cfg.modalities
        self.use_audio = "audio" in cfg.modalities
        self.as_tokens = cfg.fusion in ("none", "transformer")
        fused = self.use_face and len(cfg.modalities) > 1
        self.modality_dropout = cfg.modality_dropout if fused else 0.0
        top = ResNetTop(layer4) if layer4 is not None else top
        self.top, self.face_norm, self.face_mix, self.face_k = None, None, None, None
        d, n_tokens, extra = NO_FACE_DIM, 0, 0
        if self.use_face:
            face = sets["face"]
            d = self._face_input(cfg, face, top)
            n_tokens += int(face.data.shape[1])
        elif top is not None:
            raise FerError(f"--finetune {cfg.finetune or 'layer4'} trains the face backbone: add face to "
                           "--modalities")
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

    def _face_input(self, cfg: TrainConfig, face: ModalityData, top: nn.Module | None) -> int:
        """Set up what turns the stored face rows into tokens; return the token width."""
        cut = face_cut(face.provenance) or {}
        shape = tuple(face.data.shape[2:])
        if face_is_maps(face) or cut.get("kind") == "block":
            if top is None:
                if face_is_maps(face):
                    what, how = f"layer3 maps {tuple(face.data.shape[1:])}", "--finetune layer4"
                else:
                    what, how = f"a ViT's tokens entering block {cut.get('block')}", "--finetune top"
                raise FerError(f"{face.spec} holds {what}: train it with {how}")
            self.top = top
            self.face_norm = InputNorm(top.width) if top.standardize else None
            return int(top.width)
        if top is not None:
            raise FerError(f"--finetune {cfg.finetune or 'layer4'} needs a face feature set cut inside its "
                           f"backbone (layer3 maps, or block:K tokens); {face.spec} holds pooled vectors")
        if cut.get("kind") != "all":
            if cfg.face_layer is not None:
                raise FerError(f"--face-layer picks a block of a set extracted with --layer all; {face.spec} "
                               "holds one pooled vector per frame")
            self.face_norm = InputNorm(int(shape[-1]))
            return int(shape[-1])
        n, width = int(shape[-2]), int(shape[-1])
        if cfg.face_layer == WEIGHTED:
            self.face_mix = LayerMix(n, width, InputNorm(n * width))
        else:
            k = n - 1 if cfg.face_layer is None else int(cfg.face_layer)
            if not -n <= k < n:
                raise FerError(f"--face-layer {k} is out of range: {face.spec} holds blocks 0..{n - 1}")
            self.face_k = k % n
            self.face_norm = InputNorm(width)
        return width

    def fit_input_norm(self, chunks: Callable[[str], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Set the face/audio standardisation from the training split: ``chunks(modality)`` yields its stored
        tokens with their masks a chunk at a time (a batch source's norm_chunks), so one chunk is in memory at once.

        Only what is normalised is asked for: layer3 maps (no face_norm) are never read here. A ViT top's
        outputs are standardised with the statistics of its untrained outputs on TOP_NORM_FRAMES training
        frames.
        """
        if self.face_mix is not None:
            self.face_mix.fit(frame_rows(chunks("face")))
        elif self.face_norm is not None and self.top is not None:
            self.face_norm.fit(self._top_outputs(frame_rows(chunks("face"))))
        elif self.face_norm is not None and self.face_k is not None:
            self.face_norm.fit((x[:, self.face_k], m) for x, m in frame_rows(chunks("face")))
        elif self.face_norm is not None:
            self.face_norm.fit(chunks("face"))
        if self.use_audio:
            self.audio_norm.fit(chunks("audio"))

    def _top_outputs(self, frames: Iterable[tuple[torch.Tensor, torch.Tensor]]
                     ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """(top output (n, D), mask (n,)) of the valid frames of ``frames`` chunks, up to TOP_NORM_FRAMES."""
        was, seen = self.top.training, 0
        self.top.eval()
        try:
            for x, m in frames:
                x = x[m][: TOP_NORM_FRAMES - seen]
                if len(x):
                    with torch.no_grad():
                        y = self.top(x.float())
                    seen += len(y)
                    yield y, torch.ones(len(y), dtype=torch.bool, device=y.device)
                if seen >= TOP_NORM_FRAMES:
                    break
        finally:
            self.top.train(was)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Return (B, C) logits (log-softmax is applied in the loss)."""
        tokens: list[torch.Tensor] = []
        pads: list[torch.Tensor] = []
        extras: list[torch.Tensor] = []
        if self.use_face:
            face, fmask = batch["face"], batch["face_mask"]
            b, t = face.shape[:2]
            if self.top is not None:
                face = self.top(face.flatten(0, 1)).view(b, t, -1)
            elif self.face_mix is not None:
                face = self.face_mix(face.flatten(0, 1)).view(b, t, -1)
            elif self.face_k is not None:
                face = face[:, :, self.face_k]
            if self.face_norm is not None:
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
