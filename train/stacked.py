"""K FerModels of one architecture trained as one batched model: every parameter stacked along a leading model
axis, one forward over K models and K batches (batched matmuls, grouped convolutions), each model with its own
random stream.

A stack is built from K FerModels (each initialised and standardised as it would be alone) and gives each
model's state back in FerModel's state-dict layout, so checkpoints, `fer predict` and everything downstream
see FerModels. Its forward is FerModel.forward written over the model axis: inputs are (K, B, ...) with the
rows of model k in [0, n_k) (the rest is padding: a model whose epoch has fewer or no batches left), batch
norm counts each model's real rows only, and every dropout mask of model k comes from its own generator, drawn
for its n_k rows site by site in a fixed order. So a model's numbers depend on its own settings, seed and
data only, never on which models it is stacked with (up to floating-point reassociation of batched kernels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fer.train.model import FerModel

NOISE_SEED = 104729
"""Offset of a model's dropout generator's seed from its fold's seed (a stream apart from the others)."""
BN_EPS, BN_MOMENTUM, LN_EPS = 1e-5, 0.1, 1e-5
"""nn.BatchNorm1d's and nn.LayerNorm's defaults, as FerModel builds them."""

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Arch:
    """What a FerModel is made of (the same for every model of a stack)."""

    face: str | None
    """None (no face), "norm" (pooled vectors), "k" (one block of --layer all) or "mix" (weighted blocks)."""
    face_k: int | None
    pose: bool
    audio: str | None
    """None, "layer" (one wav2vec2 layer), "mix" (weighted layers) or "seq" (a mel sequence)."""
    as_tokens: bool
    fused: bool
    layers: int
    heads: int

    @classmethod
    def of(cls, model: FerModel) -> Arch:
        face = None
        if model.use_face:
            face = "mix" if model.face_mix is not None else "k" if model.face_k is not None else "norm"
        audio = None
        if model.use_audio:
            audio = "seq" if model.audio_seq else "mix" if hasattr(model.audio_norm, "logits") else "layer"
        enc = model.encoder
        return cls(face=face, face_k=model.face_k, pose=model.use_pose, audio=audio, as_tokens=model.as_tokens,
                   fused=model.use_face and (model.use_pose or model.use_audio),
                   layers=len(enc.layers) if enc is not None else 0,
                   heads=enc.layers[0].self_attn.num_heads if enc is not None else 1)


def stackable(model: FerModel) -> str | None:
    """Why a model cannot be stacked (a fine-tuned backbone top), or None."""
    if model.top is not None:
        return "a fine-tuned backbone top (--finetune) is trained one model at a time"
    return None


class StackedModel:
    """K FerModels as one (see the module note). ``params`` and ``buffers`` hold (K, ...) tensors under
    FerModel's state-dict names; ``dropout`` and ``modality_dropout`` are (K,) per-model rates."""

    def __init__(self, models: Sequence[FerModel], generators: Sequence[torch.Generator]):
        why = stackable(models[0])
        if why is not None:
            raise ValueError(why)
        self.arch = Arch.of(models[0])
        self.names = [n for n, _ in models[0].named_parameters()]
        self.buffer_names = [n for n, _ in models[0].named_buffers()]
        self.params: Tensors = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
                                .requires_grad_(True) for n in self.names}
        self.buffers: Tensors = {n: torch.stack([dict(m.named_buffers())[n].detach() for m in models])
                                 for n in self.buffer_names}
        dev = self.params[self.names[0]].device
        self.rates = {"dropout": [_dropout_of(m) for m in models],
                      "modality": [float(m.modality_dropout) for m in models]}
        self.dropout = torch.tensor(self.rates["dropout"], device=dev)
        self.modality_dropout = torch.tensor(self.rates["modality"], device=dev)
        self.generators = list(generators)
        self.training = True
        self._n: list[int] = []

    @property
    def k(self) -> int:
        return len(self.generators)

    # ------------------------------------------------------------ states
    def state(self, k: int) -> Tensors:
        """Model k's state in FerModel's state-dict layout (views into the stack)."""
        out = {n: self.params[n][k].detach() for n in self.names}
        out.update({n: self.buffers[n][k] for n in self.buffer_names})
        return out

    @torch.no_grad()
    def load(self, k: int, state: Mapping[str, torch.Tensor]) -> None:
        """Set model k from a FerModel state dict."""
        for n in self.names:
            self.params[n][k].copy_(state[n])
        for n in self.buffer_names:
            self.buffers[n][k].copy_(state[n])

    @torch.no_grad()
    def keep(self, which: Sequence[int]) -> None:
        """Keep only the models ``which`` (a model that finished leaves the stack)."""
        idx = torch.tensor(list(which), dtype=torch.long, device=self.dropout.device)
        self.params = {n: p.detach().index_select(0, idx).requires_grad_(True) for n, p in self.params.items()}
        self.buffers = {n: b.index_select(0, idx) for n, b in self.buffers.items()}
        self.dropout, self.modality_dropout = self.dropout[idx], self.modality_dropout[idx]
        self.rates = {key: [r[i] for i in which] for key, r in self.rates.items()}
        self.generators = [self.generators[i] for i in which]

    def copy(self, k: int) -> StackedModel:
        """A one-model stack of a copy of model k (no gradients)."""
        one = object.__new__(StackedModel)
        one.__dict__.update(self.__dict__)
        one.params = {n: p[k:k + 1].detach().clone() for n, p in self.params.items()}
        one.buffers = {n: b[k:k + 1].clone() for n, b in self.buffers.items()}
        one.dropout, one.modality_dropout = self.dropout[k:k + 1], self.modality_dropout[k:k + 1]
        one.rates = {key: r[k:k + 1] for key, r in self.rates.items()}
        one.generators = self.generators[k:k + 1]
        return one

    def parameters(self) -> list[torch.Tensor]:
        return [self.params[n] for n in self.names]

    # ------------------------------------------------------------ randomness
    def _uniform(self, shape: tuple[int, ...], like: torch.Tensor, rates: Sequence[float]) -> torch.Tensor:
        """(K, B, *shape) uniforms: for each model with a rate above 0, its rows [0, n_k) from its own generator
        (what it would draw alone); 1 elsewhere (kept)."""
        u = torch.empty((self.k, like.shape[1], *shape), device=like.device, dtype=like.dtype)
        for k, (g, n, rate) in enumerate(zip(self.generators, self._n, rates)):
            drawn = n if rate > 0 else 0
            if drawn:
                torch.rand((n, *shape), generator=g, out=u[k, :n])
            if drawn < u.shape[1]:
                u[k, drawn:] = 1.0
        return u

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout of x (K, B, ...) at each model's --dropout (inverted: kept values scaled by 1/(1-p))."""
        rates = self.rates["dropout"]
        if not self.training or not any(rates):
            return x
        shape = (self.k,) + (1,) * (x.dim() - 1)
        keep = self._uniform(tuple(x.shape[2:]), x, rates) >= self.dropout.view(shape)
        return x * keep * (1.0 / (1.0 - self.dropout)).view(shape)

    # ------------------------------------------------------------ layers
    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
        return _linear(x, w, b)

    def _batch_norm(self, x: torch.Tensor, name: str, rows: torch.Tensor) -> torch.Tensor:
        """nn.BatchNorm1d over each model's real rows (x (K, B, C); rows (K, B) bool)."""
        w, b = self.params[f"{name}.weight"][:, None], self.params[f"{name}.bias"][:, None]
        mean_key, var_key = f"{name}.running_mean", f"{name}.running_var"
        if not self.training:
            mean, var = self.buffers[mean_key][:, None], self.buffers[var_key][:, None]
            return (x - mean) / torch.sqrt(var + BN_EPS) * w + b
        m = rows.unsqueeze(-1).to(x.dtype)
        n = m.sum(1, keepdim=True).clamp_min(1)
        mean = (x * m).sum(1, keepdim=True) / n
        var = (((x - mean) * m) ** 2).sum(1, keepdim=True) / n
        with torch.no_grad():
            live = (n > 1).view(-1, 1)  # a model without rows in this step keeps its statistics
            unbiased = var.squeeze(1) * n.squeeze(1) / (n.squeeze(1) - 1).clamp_min(1)
            for key, new in ((mean_key, mean.squeeze(1)), (var_key, unbiased)):
                old = self.buffers[key]
                old.copy_(torch.where(live, (1 - BN_MOMENTUM) * old + BN_MOMENTUM * new.detach(), old))
            tracked = self.buffers[f"{name}.num_batches_tracked"]
            tracked.add_(live.view(-1).to(tracked.dtype))
        return (x - mean) / torch.sqrt(var + BN_EPS) * w + b

    def _layer_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        shape = (self.k,) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        y = F.layer_norm(x, x.shape[-1:], eps=LN_EPS)
        return y * self.params[f"{name}.weight"].view(shape) + self.params[f"{name}.bias"].view(shape)

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """InputNorm: (x - mean) / std with each model's statistics over the last axis."""
        shape = (self.k,) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return (x - self.buffers[f"{name}.mean"].view(shape)) / self.buffers[f"{name}.std"].view(shape)

    def _mix(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """LayerMix: (K, N, L, D) -> (K, N, D), per-layer standardisation, then each model's softmax weights."""
        k, n, layers, d = x.shape
        z = self._norm(x.reshape(k, n, layers * d), f"{name}.norm").view(k, n, layers, d)
        return torch.einsum("kl,knld->knd", torch.softmax(self.params[f"{name}.logits"], dim=1), z)

    def _attention(self, h: torch.Tensor, i: int, pad: torch.Tensor | None) -> torch.Tensor:
        """nn.MultiheadAttention's self-attention (batch first) of layer i over h (K, B, T, d)."""
        name = f"encoder.layers.{i}.self_attn"
        k, b, t, d = h.shape
        heads = self.arch.heads
        qkv = _linear(h, self.params[f"{name}.in_proj_weight"], self.params[f"{name}.in_proj_bias"])
        q, key, v = (z.reshape(k, b, t, heads, d // heads).transpose(2, 3) for z in qkv.chunk(3, dim=-1))
        scores = (q * (1.0 / math.sqrt(d // heads))) @ key.transpose(-1, -2)  # (K, B, H, T, T)
        if pad is not None:
            scores = scores.masked_fill(pad[:, :, None, None, :], float("-inf"))
        attn = self._drop(torch.softmax(scores, dim=-1))
        out = (attn @ v).transpose(2, 3).reshape(k, b, t, d)
        return self._linear(out, f"{name}.out_proj")

    def _encoder_layer(self, h: torch.Tensor, i: int, pad: torch.Tensor | None) -> torch.Tensor:
        """nn.TransformerEncoderLayer (post-norm, ReLU) of layer i."""
        name = f"encoder.layers.{i}"
        h = self._layer_norm(h + self._drop(self._attention(h, i, pad)), f"{name}.norm1")
        ff = self._linear(self._drop(torch.relu(self._linear(h, f"{name}.linear1"))),
                          f"{name}.linear2")
        return self._layer_norm(h + self._drop(ff), f"{name}.norm2")

    def _conv1d(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Conv1d (kernel 5, padding 2) of each model over x (K, B, T, C) -> (K, B, T, C_out): one grouped
        convolution over the models."""
        w, bias = self.params[f"{name}.weight"], self.params[f"{name}.bias"]  # (K, O, C, 5), (K, O)
        k, b, t, c = x.shape
        y = F.conv1d(x.permute(1, 0, 3, 2).reshape(b, k * c, t), w.reshape(-1, c, w.shape[-1]),
                     bias.reshape(-1), padding=w.shape[-1] // 2, groups=k)
        return y.view(b, k, -1, t).permute(1, 0, 3, 2)

    def _audio(self, batch: Mapping[str, torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, B, 128) audio vectors (zero without audio) and (K, B) whether there is audio."""
        am, x = batch["audio_mask"], batch["audio"]
        if self.arch.audio == "seq":
            h = self._norm(x, "audio_norm")
            h = torch.relu(self._conv1d(torch.relu(self._conv1d(h, "audio_enc.conv.0")), "audio_enc.conv.2"))
            m = am.to(h.dtype).unsqueeze(-1)
            pooled = (h * m).sum(2) / m.sum(2).clamp_min(1.0)
            a = torch.relu(self._batch_norm(self._linear(pooled, "audio_enc.out.0"), "audio_enc.out.1", rows))
            a = self._drop(a)
            am = am.any(dim=-1)
        else:
            h = self._mix(x, "audio_norm") if self.arch.audio == "mix" else self._norm(x, "audio_norm")
            h = torch.relu(self._batch_norm(self._linear(h, "audio_enc.0"), "audio_enc.1", rows))
            h = self._drop(h)
            a = torch.relu(self._batch_norm(self._linear(h, "audio_enc.4"), "audio_enc.5", rows))
        return a * am.unsqueeze(-1).to(a.dtype), am

    def _face(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        face, fmask = batch["face"], batch["face_mask"]
        k, b, t = face.shape[:3]
        if self.arch.face == "mix":
            face = self._mix(face.reshape(k, b * t, *face.shape[3:]), "face_mix").view(k, b, t, -1)
        else:
            if self.arch.face == "k":
                face = face[:, :, :, self.arch.face_k]
            face = self._norm(face, "face_norm")
        keep = fmask.unsqueeze(-1).to(face.dtype)
        if self.training and any(self.rates["modality"]):
            # modality dropout: blank the whole face of some training clips (FerModel.forward says why)
            drop = self._uniform((), face, self.rates["modality"]) < self.modality_dropout.view(-1, 1)
            keep = keep * (~drop).to(face.dtype)[:, :, None, None]
        return face * keep

    # ------------------------------------------------------------ forward
    def forward(self, batch: Mapping[str, torch.Tensor], n: Sequence[int]) -> torch.Tensor:
        """(K, B, C) logits of inputs (K, B, ...) where model k's rows are [0, n[k]) (FerModel.forward)."""
        self._n = [int(x) for x in n]
        first = next(iter(batch.values()))
        b = first.shape[1]
        rows = torch.arange(b, device=first.device)[None, :] < torch.tensor(self._n, device=first.device)[:, None]
        tokens, pads, extras = [], [], []
        if self.arch.face is not None:
            face = self._face(batch)
            tokens.append(face)
            pads.append(torch.zeros(face.shape[:3], dtype=torch.bool, device=face.device))
        if self.arch.pose:
            pm = batch["pose_mask"]
            pose = batch["pose"]
            p = self._linear(pose.flatten(3), "pose_proj") * pm.unsqueeze(-1).to(pose.dtype)
            if self.arch.as_tokens:
                tokens.append(p)
                pads.append(~pm)
            else:
                extras.append(p.flatten(2))
        if self.arch.audio is not None:
            a, am = self._audio(batch, rows)
            if self.arch.as_tokens:
                tokens.append(self._linear(a, "audio_tok").unsqueeze(2))
                pads.append(~am.unsqueeze(2))
            else:
                extras.append(a)
        parts = extras
        if self.arch.layers:
            h = torch.cat(tokens, dim=2) + self.params["pos"]
            pad = torch.cat(pads, dim=2)
            pad = pad & ~pad.all(dim=2, keepdim=True)  # FerModel.forward: a clip with no token attends to all
            face_alone = self.arch.face is not None and len(pads) == 1
            mask = None if face_alone else pad  # a face token is never padded
            for i in range(self.arch.layers):
                h = self._encoder_layer(h, i, mask)
            h = h.masked_fill(pad.unsqueeze(-1), 0.0)
            parts = [h.flatten(2), *extras]
        z = torch.relu(self._linear(torch.cat(parts, dim=2), "head.0"))
        return self._linear(self._drop(z), "head.3")

    __call__ = forward


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (K, ..., in) @ w (K, out, in)^T + b (K, out), one batched matmul over the models."""
    k, shape = x.shape[0], x.shape[1:-1]
    y = torch.baddbmm(b.unsqueeze(1), x.reshape(k, -1, x.shape[-1]), w.transpose(1, 2))
    return y.view(k, *shape, w.shape[1])


def _dropout_of(model: FerModel) -> float:
    """The rate of the model's dropout layers (one --dropout for all of them)."""
    return float(model.head[2].p)
