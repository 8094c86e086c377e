"""What the fit loop trains: K models of one architecture as one stack, or one FerModel as it is.

Both give the loop the same few operations over their K models (K = 1 for a module): a training step on each
model's batch (None: the model sits this step out), evaluation logits, each model's state, optimizer state and
random state for its checkpoint, its learning-rate holder for its scheduler, and dropping models that
finished. StackTrainee batches the models (fer.train.stacked, fer.train.optim.StackedAdam); ModuleTrainee
is the FerModel and torch optimizer of a model with a fine-tuned backbone top (--finetune), which is not
batched, with dropout from the global generator as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fer.train.config import TrainConfig
from fer.train.model import FerModel
from fer.train.optim import StackedAdam, lr_holder, make_optimizer
from fer.train.stacked import StackedModel

Inputs = Mapping[str, torch.Tensor]
LossOf = Callable[[int, torch.Tensor], torch.Tensor]
"""loss_of(model, its logits (n, C)) -> its scalar loss."""


def stack_inputs(inputs: Sequence[Inputs | None]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Each model's batch (None: no rows) as (K, B, ...) tensors, zero-padded to the longest, and the rows
    each model has."""
    first = next(x for x in inputs if x is not None)
    n = [0 if x is None else int(next(iter(x.values())).shape[0]) for x in inputs]
    if len(inputs) == 1:
        return {key: v.unsqueeze(0) for key, v in first.items()}, n
    b = max(n)
    out = {}
    for key, v in first.items():
        x = torch.zeros((len(inputs), b, *v.shape[1:]), dtype=v.dtype, device=v.device)
        for i, one in enumerate(inputs):
            if one is not None:
                x[i, : n[i]] = one[key]
        out[key] = x
    return out, n


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


class StackTrainee:
    """K models as one StackedModel with one StackedAdam; each model's schedule drives its lr holder."""

    def __init__(self, models: Sequence[FerModel], cfgs: Sequence[TrainConfig], noise: Sequence[torch.Generator],
                 meta: Callable[[], FerModel]):
        """``meta()``: the models' layout on the meta device (for torch's optimizer state format)."""
        self.model = StackedModel(models, noise)
        self.opt = StackedAdam(self.model.parameters(), cfgs)
        self.holders = [lr_holder(c) for c in cfgs]
        self.noise = list(noise)
        self.has_bn = has_batch_norm(models[0])
        self.cfgs = list(cfgs)
        self._meta = meta
        self._layout: FerModel | None = None
        self.ids = list(range(len(models)))
        self._stepped: set[int] = set()
        """The members still in the stack, by their position when it was built."""

    @property
    def k(self) -> int:
        return len(self.ids)

    def _at(self, member: int) -> int:
        return self.ids.index(member)

    def train_step(self, inputs: Sequence[Inputs | None], loss_of: LossOf) -> list[torch.Tensor | None]:
        """One optimisation step of every model with a batch; their losses (detached)."""
        for i in self.ids:
            if i not in self._stepped:  # a scheduler expects its optimizer to have stepped before it steps
                self.holders[i].step()
                self._stepped.add(i)
        self.opt.lr = [float(self.holders[i].param_groups[0]["lr"]) for i in self.ids]
        self.model.training = True
        x, n = stack_inputs(inputs)
        logits = self.model(x, n)
        losses: list[torch.Tensor | None] = [None] * self.k
        total = None
        for j, rows in enumerate(n):
            if rows:
                losses[j] = loss_of(j, logits[j, :rows])
                total = losses[j] if total is None else total + losses[j]
        self.opt.zero_grad()
        if total is not None:
            total.backward()
        self.opt.step([j for j, rows in enumerate(n) if rows])
        return [None if x is None else x.detach() for x in losses]

    @torch.no_grad()
    def logits(self, inputs: Sequence[Inputs | None]) -> list[torch.Tensor | None]:
        """Evaluation logits of each model on its inputs (None: none)."""
        self.model.training = False
        x, n = stack_inputs(inputs)
        out = self.model(x, n)
        return [out[j, :rows] if rows else None for j, rows in enumerate(n)]

    def lr_optimizer(self, member: int) -> torch.optim.Optimizer:
        return self.holders[member]

    def state(self, member: int) -> dict[str, torch.Tensor]:
        return self.model.state(self._at(member))

    def load(self, member: int, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load(self._at(member), state)

    def optimizer_state(self, member: int) -> dict[str, Any]:
        j = self._at(member)
        if self._layout is None:
            self._layout = self._meta()
        sd = make_optimizer(self.cfgs[member], self._layout).state_dict()  # the format alone: no state
        sd["param_groups"][0]["lr"] = float(self.holders[member].param_groups[0]["lr"])  # after its schedule
        if self.opt.steps[j]:
            sd["state"] = {i: {"step": torch.tensor(float(self.opt.steps[j])),
                               "exp_avg": m[j].detach().cpu().clone(), "exp_avg_sq": v[j].detach().cpu().clone()}
                           for i, (m, v) in enumerate(zip(self.opt.exp_avg, self.opt.exp_avg_sq))}
        return sd

    @torch.no_grad()
    def load_optimizer(self, member: int, state: Mapping[str, Any]) -> None:
        j = self._at(member)
        order = state["param_groups"][0]["params"]
        self.opt.lr[j] = float(state["param_groups"][0]["lr"])
        self.holders[member].param_groups[0]["lr"] = self.opt.lr[j]
        st = state.get("state", {})
        for i, m, v in zip(order, self.opt.exp_avg, self.opt.exp_avg_sq):
            if i in st:
                m[j].copy_(st[i]["exp_avg"])
                v[j].copy_(st[i]["exp_avg_sq"])
                self.opt.steps[j] = int(st[i]["step"])

    def rng_state(self, member: int) -> dict[str, torch.Tensor]:
        return {"noise": self.noise[member].get_state()}

    def set_rng_state(self, member: int, ck: Mapping[str, Any]) -> None:
        if "noise" in ck:
            self.noise[member].set_state(ck["noise"])

    def remove(self, member: int) -> None:
        """Take a finished model out of the stack (the others go on)."""
        keep = [j for j, i in enumerate(self.ids) if i != member]
        self.ids = [self.ids[j] for j in keep]
        if keep:
            self.model.keep(keep)
            self.opt.keep(keep, self.model.parameters())

    def solo(self, member: int, state: Mapping[str, torch.Tensor]) -> StackTrainee:
        """A one-model stack of ``state`` for evaluation (the test pass: the same code alone or in a group)."""
        one = object.__new__(StackTrainee)
        one.model = self.model.copy(self._at(member))
        one.model.load(0, state)
        one.ids, one.has_bn = [member], self.has_bn
        return one


class ModuleTrainee:
    """One FerModel (with its backbone top) and its torch optimizer, as a model has always been trained."""

    def __init__(self, model: FerModel, cfg: TrainConfig):
        self.model = model
        self.opt = make_optimizer(cfg, model)
        self.has_bn = has_batch_norm(model)
        self.ids = [0]

    @property
    def k(self) -> int:
        return len(self.ids)

    def train_step(self, inputs: Sequence[Inputs | None], loss_of: LossOf) -> list[torch.Tensor | None]:
        if inputs[0] is None:
            return [None]
        self.model.train()
        loss = loss_of(0, self.model(inputs[0]))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return [loss.detach()]

    @torch.no_grad()
    def logits(self, inputs: Sequence[Inputs | None]) -> list[torch.Tensor | None]:
        self.model.eval()
        return [None if inputs[0] is None else self.model(inputs[0])]

    def lr_optimizer(self, member: int) -> torch.optim.Optimizer:
        return self.opt

    def state(self, member: int) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load(self, member: int, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def optimizer_state(self, member: int) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_optimizer(self, member: int, state: Mapping[str, Any]) -> None:
        self.opt.load_state_dict(state)

    def rng_state(self, member: int) -> dict[str, torch.Tensor]:
        out = {"rng": torch.get_rng_state()}
        dev = next(self.model.parameters()).device
        if dev.type == "cuda":
            out["cuda_rng"] = torch.cuda.get_rng_state(dev)
        return out

    def set_rng_state(self, member: int, ck: Mapping[str, Any]) -> None:
        torch.set_rng_state(ck["rng"])
        dev = next(self.model.parameters()).device
        if dev.type == "cuda" and "cuda_rng" in ck:
            torch.cuda.set_rng_state(ck["cuda_rng"], dev)

    def remove(self, member: int) -> None:
        self.ids = []

    def solo(self, member: int, state: Mapping[str, torch.Tensor]) -> ModuleTrainee:
        self.model.load_state_dict(state)
        self.ids = [member]
        return self
