"""Exponential moving average of the trainable parameters (LoRA weights or the full transformer).

Shadows are fp32 and keyed by parameter name, so they save to safetensors and load back into
any model whose trainable parameters have the same names (the export path loads LoRA under
the adapter name "default" for exactly this reason).

Under FSDP2 the parameters are DTensors and so are the shadows (each rank keeps the shards of
its parameters); `state_dict` gathers them (collective: every rank calls it) and
`load_state_dict` shards full tensors back the parameters' way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class EMAConfig:
    decay: float = 0.999
    # Warm-up as diffusers' EMAModel: decay_n = min(decay, (1 + n) / (10 + n)), so early
    # shadows are not dominated by the random initial weights.
    warmup: bool = True
    every: int = 1  # update every this many optimiser steps (the loop decides when to call)

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {self.decay}")
        if self.every < 1:
            raise ValueError(f"ema.every must be >= 1, got {self.every}")


class EMA:
    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: EMAConfig = EMAConfig()):
        self.cfg = cfg
        self.shadow = {n: p.detach().float().clone() for n, p in named_params}
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.cfg.warmup:
            return self.cfg.decay
        n = self.num_updates
        return min(self.cfg.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
        decay = self.current_decay()
        params = dict(named_params)
        if params.keys() != self.shadow.keys():
            raise ValueError("EMA.update: parameter names differ from the ones the EMA was built with")
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        torch._foreach_lerp_(shadows, [params[n].detach().to(s) for n, s in zip(names, shadows, strict=True)], 1.0 - decay)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) shadows by name; collective when they are DTensors."""
        from torch.distributed.tensor import DTensor

        return {n: s.full_tensor() if isinstance(s, DTensor) else s for n, s in self.shadow.items()}

    def load_state_dict(self, shadow: dict[str, torch.Tensor], num_updates: int) -> None:
        if shadow.keys() != self.shadow.keys():
            missing, extra = self.shadow.keys() - shadow.keys(), shadow.keys() - self.shadow.keys()
            raise ValueError(f"EMA state does not match the model: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
        from torch.distributed.tensor import DTensor, distribute_tensor

        loaded = {}
        for n, t in shadow.items():
            like = self.shadow[n]
            if isinstance(like, DTensor):  # shard as the parameter is sharded (collective)
                loaded[n] = distribute_tensor(t.to(like.device, torch.float32), like.device_mesh, like.placements)
            else:
                loaded[n] = t.to(like.device, torch.float32).clone()
        self.shadow = loaded
        self.num_updates = num_updates

    @torch.no_grad()
    def copy_to(self, named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
        for n, p in named_params:
            p.copy_(self.shadow[n].to(p))

    @contextlib.contextmanager
    def applied(self, named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> Iterator[None]:
        """Swap the EMA weights in (validation samples), and the training weights back after."""
        params = list(named_params)
        backup = {n: p.detach().clone() for n, p in params}
        self.copy_to(params)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params:
                    p.copy_(backup[n])
