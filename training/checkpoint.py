"""Checkpoints that resume a run exactly: weights, optimiser, LR schedule, step, RNG, data position.

Layout of ``<root>/checkpoint-<step:08d>/``::

    lora/pytorch_lora_weights.safetensors   LoRA runs: diffusers format (CogVideoXPipeline.save_lora_weights,
                                            with the LoraConfig as adapter metadata); pipe.load_lora_weights(dir/lora)
    transformer/                            full finetunes: save_pretrained (config.json + *.safetensors, fp32)
    ema.safetensors                         EMA shadows keyed by trainable parameter name (if an EMA is given)
    optimizer.pt  lr_scheduler.pt  rng.pt   torch.save of state dicts; read back with weights_only=True
    state.json                              step, data_position, kind, EMA update count; written last

A checkpoint is written into a hidden temporary directory and renamed into place, so a
directory named ``checkpoint-*`` is always complete; a crash mid-save leaves only a ``.tmp-*``
directory that the next save of that step replaces. Only the main process should call save.

FSDP2 (sharded parameters): the loop gathers full state dicts collectively on every rank
(torch.distributed.checkpoint.state_dict with full_state_dict=True) and passes them here as
``transformer_state`` / ``optimizer_state`` / ``ema_state``; rank 0 writes the same layout
(the transformer in diffusers format, so export reads it as any full finetune). The optimizer
state is then keyed by parameter name (state.json ``optimizer_keys: "fqn"``) and loads back
with ``set_optimizer_state_dict`` (``sharded_module``), each rank taking its shards.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training.ema import EMA
from training.models import Models

FORMAT = 1
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class ResumeState:
    step: int
    data_position: dict


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"checkpoint-{step:08d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "state.json").exists()]
    return max(found)[1] if found else None


def save_checkpoint(
    root: str | Path,
    *,
    step: int,
    models: Models,
    optimizer: torch.optim.Optimizer,
    lr_scheduler=None,
    ema: EMA | None = None,
    data_position: dict | None = None,
    generators: dict[str, torch.Generator] | None = None,
    keep_last: int | None = None,
    transformer_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and return its directory. ``data_position`` must be JSON."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    lora = models.config.lora is not None
    if lora:
        _save_lora(models, tmp / "lora")
    else:  # diffusers' layout (config.json + safetensors), from the live or the gathered weights
        models.transformer.save_config(tmp / "transformer")
        weights = transformer_state if transformer_state is not None else models.transformer.state_dict()
        save_file({n: t.detach().cpu().contiguous() for n, t in weights.items()},
                  tmp / "transformer" / "diffusion_pytorch_model.safetensors")
    if ema is not None:
        shadows = ema_state if ema_state is not None else ema.state_dict()
        save_file({n: t.detach().cpu().contiguous() for n, t in shadows.items()}, tmp / "ema.safetensors")
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
    if lr_scheduler is not None:
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    torch.save(_rng_state(generators or {}), tmp / "rng.pt")
    state = {
        "format": FORMAT,
        "step": step,
        "kind": "lora" if lora else "full",
        "variant": models.config.variant,
        "version": models.config.version,
        "ema_updates": ema.num_updates if ema is not None else None,
        "optimizer_keys": "fqn" if optimizer_state is not None else "index",
        "data_position": data_position or {},
    }
    _write_synced(tmp / "state.json", json.dumps(state, indent=2))

    if final.exists():  # re-saving a step (e.g. after a crash and rerun): swap, then drop the old one
        old = root / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    if keep_last:
        _prune(root, keep_last)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    models: Models,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler=None,
    ema: EMA | None = None,
    generators: dict[str, torch.Generator] | None = None,
    restore_rng: bool = True,
    sharded_module: torch.nn.Module | None = None,
) -> ResumeState:
    """Restore a checkpoint into already built objects (same model config, same parameter order).
    ``sharded_module``: the FSDP2-sharded transformer; every rank calls this and loads its shards
    of the weights and optimizer state (collective)."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state["format"] != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state['format']}, this code reads {FORMAT}")
    kind = "lora" if models.config.lora is not None else "full"
    if state["kind"] != kind:
        raise ValueError(f"{path} is a {state['kind']} checkpoint but model.lora says {kind}")

    if kind == "lora":
        _load_lora(models, path / "lora")
    else:
        weights = {}
        for f in sorted((path / "transformer").glob("*.safetensors")):
            weights.update(load_file(f))
        if sharded_module is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(sharded_module, weights, options=StateDictOptions(full_state_dict=True, strict=True))
        else:
            models.transformer.load_state_dict(weights, strict=True)
    if ema is not None:
        if state["ema_updates"] is None:
            raise ValueError(f"{path} has no EMA state but an EMA was passed")
        ema.load_state_dict(load_file(path / "ema.safetensors"), state["ema_updates"])
    if optimizer is not None:
        keys = state.get("optimizer_keys", "index")
        if keys != ("fqn" if sharded_module is not None else "index"):
            raise ValueError(f"{path}: optimizer state keyed by {keys}: written by a run with another "
                             "distributed.strategy (fsdp2 checkpoints resume under fsdp2)")
        optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        if sharded_module is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(sharded_module, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(optim_state)
    if lr_scheduler is not None:
        lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", map_location="cpu", weights_only=True))
    if restore_rng:
        _set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True), generators or {})
    return ResumeState(step=state["step"], data_position=state["data_position"])


def _save_lora(models: Models, out: Path) -> None:
    from diffusers import CogVideoXPipeline
    from peft.utils import get_peft_model_state_dict

    tr = models.transformer
    layers = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(tr, adapter_name="default").items()}
    CogVideoXPipeline.save_lora_weights(
        save_directory=out,
        transformer_lora_layers=layers,
        transformer_lora_adapter_metadata=tr.peft_config["default"].to_dict(),  # rank/alpha travel with the weights
    )


def _load_lora(models: Models, lora_dir: Path) -> None:
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    sd = load_file(lora_dir / "pytorch_lora_weights.safetensors")
    sd = convert_unet_state_dict_to_peft({k.removeprefix("transformer."): v for k, v in sd.items()})
    result = set_peft_model_state_dict(models.transformer, sd, adapter_name="default")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"{lora_dir}: LoRA does not fit the model: unexpected {result.unexpected_keys[:3]}, missing {missing[:3]}")


def _rng_state(generators: dict[str, torch.Generator]) -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        # As a tensor and plain numbers: weights_only loading refuses numpy arrays.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def _set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    missing = generators.keys() - state["generators"].keys()
    if missing:
        raise ValueError(f"checkpoint has no state for generators {sorted(missing)}")
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: Path, keep_last: int) -> None:
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)))
    for _, p in found[:-keep_last]:
        shutil.rmtree(p)
