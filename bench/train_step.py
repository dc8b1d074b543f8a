"""What the data loader costs a training step, and (on CUDA) how close the step runs to the GPU's peak.

    python bench/train_step.py                          # tiny models + tiny shards, CPU: a smoke figure
    python bench/train_step.py --config FILE [--device cuda] [--loader-workers N]
    python bench/train_step.py --shape 2b --device cuda [--full] [--batch-size B] [--no-gradient-checkpointing]
    python bench/train_step.py --shape 2b --device cpu --steps 1 --warmup 1 --frames 9 --height 64 --width 96
        (the last: a code-path check of the GPU setup on small inputs, fp32; minutes on 2 cores)

Setups (`--shape`, `--config`):
  tiny (default)  build_tiny's random T2V 1.0 models and shards written by curation.outputs.write_shards
                  from a few synthetic clips and images (buckets 64x32/48x32 at 9 frames, image
                  48x32): pixels are decoded, VAE- and T5-encoded every step, as without a cache.
  --config FILE   the run's own models (load_models) and data (its shards or latent cache), in
                  one process: what one rank of the run sees (no DDP/FSDP wrapping).
  --shape 2b      a transformer shaped like CogVideoX-2B (COGVIDEOX_2B below, random weights, no
                  download), and a latent cache with random latent moments and T5 embeddings
                  (226 x 4096) written in CACHE_FORMAT for --frames x --height x --width, read by
                  the real TrainLoader: the batches a `videomill train precompute` cache gives,
                  so no VAE or T5 runs in the step (the VAE contributes only its scaling factor).
                  LoRA (rank 128, alpha 64, as ModelConfig's default) unless --full; frozen
                  weights and autocast bf16 (--precision; fp32 by default on CPU).

Two phases on the same model and optimizer, each `--warmup` untimed steps then `--steps` timed:
  (1) compute-only: the batches the loader will give, read beforehand and held in memory
      (pinned on CUDA, as the loader pins them): the baseline, no data loading;
  (2) full: the same batches (same seed, so the same sequence) from a fresh TrainLoader.
--repeat R runs the pair R times, alternating, and keeps each phase's best mean (a shared
machine's load falls on both alike; default 3 for tiny, where torch also gets 1 thread). On CPU the loader's worker processes share the cores with
the step, so the full phase's compute slows too: the ratio counts that as loader cost.
Both phases replay the same batches, not one batch, because a config mixes buckets of different
cost; and the same RNG stream, so timesteps, noise and dropout are the same too.
The step is training/loop.py's own `train_step` on the state its `build_state` makes:
training_step under the run's autocast, backward, gradient clipping, AdamW, the LR schedule,
zero_grad, EMA when configured, and float(loss), which waits for the device. Data wait is what the loop logs as
data_wait_frac: time from the end of one step until next(loader) returns, over the total.

Model FLOPs (MFU on CUDA) per sample, from the transformer's shapes and the tokens it was called on:
    2*T*(2*N + N_train) + 12*L*T^2*d
  T tokens (226 text + video patches), L layers, d = heads * head_dim; N the weights of the
  blocks' attention and MLP linears (applied to every token), N_train those trained (full
  finetune: N, so 6*N*T; LoRA: the adapters' weights, which are also in N: a frozen layer costs
  forward 2N + input gradients 2N, a trained one also 2N for its weight gradients). Attention:
  QK^T and AV are 4*T^2*d forward, twice that backward. Left out: patch/text embedding, the
  adaLN modulation (per sample, not per token), output projection (< 1% at 2B shape), the VAE
  and T5 in pixel mode, and recomputation under gradient checkpointing (MFU, not HFU). A
  flop counter (torch.utils.flop_counter) on the first warm-up step prints beside it: it counts
  hardware FLOPs of everything (recompute, attention backward's recompute, VAE/T5 when run).
Peak bf16 dense FLOP/s by device name from PEAK_BF16, or --peak-tflops.

The last two lines: `step/compute ratio` = compute-only step time / full step time (1.0: the
loader costs nothing) and `data-wait fraction` of the full phase. Peak memory:
torch.cuda.max_memory_allocated per phase on CUDA; on CPU the process's max RSS (includes setup).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import diffusers
import torch
from torch.utils.flop_counter import FlopCounterMode

from training.config import OptimConfig, RunSection, TrainConfig, load_train_config
from training.data.loader import (
    BucketSpec,
    DataConfig,
    TrainLoader,
    write_cache_index,
    write_cache_part,
)
from training.loop import build_state, train_step
from training.models import DTYPES, LoraOptions, ModelConfig, Models, load_models, prepare_transformer
from training.objective import MAX_TEXT_LEN

# The published THUDM/CogVideoX-2b transformer/config.json (diffusers' defaults are this config).
COGVIDEOX_2B = {
    "num_attention_heads": 30, "attention_head_dim": 64, "num_layers": 30, "in_channels": 16, "out_channels": 16,
    "text_embed_dim": 4096, "time_embed_dim": 512, "patch_size": 2, "patch_size_t": None, "sample_width": 90,
    "sample_height": 60, "sample_frames": 49, "temporal_compression_ratio": 4, "max_text_seq_length": 226,
    "use_rotary_positional_embeddings": False, "use_learned_positional_embeddings": False,  # 2B: sinusoidal
    "activation_fn": "gelu-approximate", "attention_bias": True, "flip_sin_to_cos": True, "freq_shift": 0,
    "norm_elementwise_affine": True, "norm_eps": 1e-5, "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0, "timestep_activation_fn": "silu", "dropout": 0.0,
}
VAE_2B_SCALING = 1.15258426  # CogVideoX-2b vae/config.json scaling_factor
LATENT_CHANNELS, VAE_SPATIAL, VAE_TEMPORAL = 16, 8, 4

# Peak dense bf16 FLOP/s (no sparsity), first name match wins.
PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("A100", 312e12))


# ---------------------------------------------------------------------------- setups

def tiny_setup(root: Path, workers: int | None) -> tuple[TrainConfig, str]:
    """build_tiny's models and shards from synthetic clips, written with curation.outputs.write_shards."""
    from training.models import build_tiny

    tiny = build_tiny(root / "tiny", variant="t2v", version="1.0")
    out = tiny_shards(root / "out")
    cfg = TrainConfig(
        data=DataConfig(
            shards=str(out), fps=8.0, frame_multiple=8, image_ratio=0.2, epoch_length=1000, shuffle_buffer=4, seed=3,
            num_workers=2 if workers is None else workers,
            buckets=(BucketSpec(width=64, height=32, frames=9), BucketSpec(width=48, height=32, frames=9),
                     BucketSpec(width=48, height=32, media="image", batch_size=2)),
        ),
        model=ModelConfig(pretrained=str(tiny), variant="t2v", version="1.0", dtype="fp32",
                          lora=LoraOptions(rank=4, alpha=4.0), gradient_checkpointing=False),
        optim=OptimConfig(lr=1e-3, warmup_steps=0),
        run=RunSection(out=str(root / "run"), mixed_precision="no", seed=7),
    )
    return cfg, f"tiny: build_tiny t2v 1.0 (random, untrained) + shards of 6 synthetic clips and 2 images in {root}"


def tiny_shards(out: Path) -> Path:
    """OUT with shards of 16:9 and 4:3 two-second clips and two images (as tests/training/test_data.py)."""
    import cv2
    import pyarrow as pa

    from curation.corpora import synthetic
    from curation.core.manifest import Layout
    from curation.core.schema import NEG_TAGS, clip_schema, neg_column, to_table
    from curation.outputs.write_shards import ShardConfig, write_shards

    media = [(f"w{i}", (320, 180), 25.0, 50) for i in range(4)] + [(f"n{i}", (240, 180), 24.0, 48) for i in range(2)]
    media += [(f"i{i}", (320, 180), None, 1) for i in range(2)]
    (out / "clips").mkdir(parents=True)
    rows, captions = [], []
    for k, (cid, (w, h), fps, n) in enumerate(media):
        if fps:
            synthetic.write_video(out / "clips" / f"{cid}.mp4", synthetic.moving(n, (w, h), (3.0, 1.0), seed=k), fps,
                                  options={"preset": "ultrafast"})
        else:
            cv2.imwrite(str(out / "clips" / f"{cid}.jpg"), cv2.cvtColor(synthetic.texture(h, w, k), cv2.COLOR_RGB2BGR))
        rows.append({"clip_id": cid, "source": f"/in/{cid}", "media_type": "video" if fps else "image", "start_frame": 0,
                     "end_frame": n, "start_s": 0.0, "end_s": n / fps if fps else None, "num_frames": n, "fps": fps,
                     "width": w, "height": h, "neg_tags": [], "status": "accepted", "reject_reasons": [],
                     "clip_path": f"clips/{cid}.{'mp4' if fps else 'jpg'}"} | {neg_column(t): 0.1 for t in NEG_TAGS})
        captions.append(f"a moving texture {k}")
    table = to_table(rows, clip_schema()).append_column("caption", pa.array(captions, pa.string()))
    write_shards(table, Layout.at(out), ShardConfig(max_samples_per_shard=2))
    return out


def config_setup(path: str, workers: int | None) -> tuple[TrainConfig, str]:
    cfg = load_train_config(path)
    if workers is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=workers))
    src = f"cache {cfg.data.cache_dir}" if cfg.data.cache_dir else f"shards {cfg.data.shards}"
    return cfg, f"config {path}: model {cfg.model.pretrained} ({cfg.model.variant} {cfg.model.version}), {src}"


def shape_setup(root: Path, args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """A synthetic latent cache for one bucket, and the config a 2B LoRA/full run would have."""
    bucket = BucketSpec(width=args.width, height=args.height, frames=args.frames, batch_size=args.batch_size)
    workers = 2 if args.loader_workers is None else args.loader_workers
    n = args.batch_size * max(4, 2 * max(1, workers))  # every stream gets batches in each pass
    f, h, w = (args.frames - 1) // VAE_TEMPORAL + 1, args.height // VAE_SPATIAL, args.width // VAE_SPATIAL
    g = torch.Generator().manual_seed(0)
    moments = torch.cat([torch.randn((n, LATENT_CHANNELS, f, h, w), generator=g),  # mean, then log-variance
                         torch.full((n, LATENT_CHANNELS, f, h, w), -6.0)], dim=1)
    tensors = {"latent_moments": moments.to(torch.bfloat16),
               "prompt_embeds": torch.randn((n, MAX_TEXT_LEN, COGVIDEOX_2B["text_embed_dim"]), generator=g).to(torch.bfloat16)}
    cache = root / "cache"
    entry = write_cache_part(cache, bucket.name, 0, tensors, [f"s{i}" for i in range(n)], ["synthetic"] * n)
    write_cache_index(cache, [entry], note="bench/train_step.py: random latents and embeddings")
    cfg = TrainConfig(
        data=DataConfig(cache_dir=str(cache), buckets=(bucket,), frame_multiple=8, image_ratio=0.0,
                        num_workers=workers, epoch_length=1000),
        model=ModelConfig(pretrained="random CogVideoX-2B shape", variant="t2v", version="1.0", dtype=args.precision,
                          lora=None if args.full else LoraOptions(),
                          gradient_checkpointing=args.gradient_checkpointing is not False),
        optim=OptimConfig(warmup_steps=0),
        run=RunSection(out=str(root / "run"), mixed_precision="bf16" if args.precision == "bf16" else "no"),
    )
    return cfg, (f"shape 2b: CogVideoX-2B-shaped transformer, random weights; synthetic latent cache of {n} samples "
                 f"at {bucket.name} (latents {f}x{h}x{w}, text {MAX_TEXT_LEN}x{COGVIDEOX_2B['text_embed_dim']}) in {cache}")


def shaped_models(cfg: TrainConfig, device: torch.device) -> Models:
    """load_models' precision policy on a CogVideoX-2B-shaped transformer built here: frozen
    weights in model.dtype, trainable ones fp32; no VAE or T5 (the cache path needs neither)."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    m = cfg.model
    torch.manual_seed(cfg.run.seed)
    with torch.device(device):
        tr = CogVideoXTransformer3DModel(**COGVIDEOX_2B)
    tr.to(DTYPES[m.dtype] if m.lora is not None else torch.float32)  # full finetune: fp32 master weights
    prepare_transformer(tr, m)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,  # as released (2B)
                                       timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True,
                                       snr_shift_scale=3.0)
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=VAE_2B_SCALING))  # all the cache path reads of it
    # Stands in for T5("") on text-dropped rows (its values do not change the cost).
    empty = torch.zeros(1, MAX_TEXT_LEN, COGVIDEOX_2B["text_embed_dim"], dtype=torch.bfloat16, device=device)
    return Models(tr, vae, None, None, scheduler, m, "", device, empty_prompt_embeds=empty)


# ---------------------------------------------------------------------------- FLOPs

@dataclass
class FlopModel:
    """Model FLOPs of the transformer calls (module docstring), accumulated by a forward pre-hook."""

    n: int  # weights of the blocks' per-token linears
    n_train: int
    layers: int
    dim: int
    patch: int
    patch_t: int
    flops: float = 0.0
    tokens: int = 0

    @classmethod
    def attach(cls, tr: torch.nn.Module) -> FlopModel:
        n = n_train = 0
        for name, mod in tr.transformer_blocks.named_modules():
            if isinstance(mod, torch.nn.Linear) and not any(part.startswith("norm") for part in name.split(".")):
                k = sum(p.numel() for p in mod.parameters(recurse=False))
                n += k
                n_train += sum(p.numel() for p in mod.parameters(recurse=False) if p.requires_grad)
        c = tr.config
        fm = cls(n, n_train, c.num_layers, c.num_attention_heads * c.attention_head_dim, c.patch_size, c.patch_size_t or 1)
        tr.register_forward_pre_hook(fm._hook, with_kwargs=True)
        return fm

    def per_sample(self, tokens: int) -> float:
        return 2.0 * tokens * (2 * self.n + self.n_train) + 12.0 * self.layers * tokens**2 * self.dim

    def _hook(self, module, args, kwargs) -> None:
        x = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        b, f, _, h, w = x.shape
        t = text.shape[1] + (f // self.patch_t) * (h // self.patch) * (w // self.patch)
        self.flops += b * self.per_sample(t)
        self.tokens = t

    def take(self) -> float:
        v, self.flops = self.flops, 0.0
        return v


# ---------------------------------------------------------------------------- timing

@dataclass
class Phase:
    name: str
    warmup: int
    wait: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    peak_gib: float = float("nan")
    counted_flops: float | None = None

    def timed(self, xs: list) -> list:
        return xs[self.warmup :]

    @property
    def total(self) -> float:
        return sum(self.timed(self.wait)) + sum(self.timed(self.compute))

    @property
    def step_s(self) -> float:
        return self.total / len(self.timed(self.compute))

    @property
    def min_step_s(self) -> float:
        return min(w + c for w, c in zip(self.timed(self.wait), self.timed(self.compute)))

    @property
    def wait_frac(self) -> float:
        return sum(self.timed(self.wait)) / self.total

    @property
    def samples_per_s(self) -> float:
        return sum(self.timed(self.samples)) / self.total

    @property
    def flops_per_s(self) -> float:
        return sum(self.timed(self.flops)) / self.total


class Stepper:
    """training/loop.py's step itself (build_state + train_step: autocast, backward, clipping,
    optimizer, LR schedule, zero_grad, EMA), timed as the loop times it."""

    def __init__(self, cfg: TrainConfig, models: Models, device: torch.device):
        self.cfg, self.models, self.device = cfg, models, device
        self.state = build_state(cfg, models, world=1, device=device)
        self.named = self.state.named
        self.flop_model = FlopModel.attach(models.transformer)

    def step(self, batch: dict, generator: torch.Generator) -> float:
        # train_step's float(loss) waits for the device, as the loop's does.
        return train_step(self.state, [batch], generator).loss

    def run(self, name: str, batches: Iterator[dict], warmup: int, steps: int, count_flops: bool = False) -> Phase:
        phase = Phase(name, warmup)
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.run.seed * 1_000_003)  # train()'s, rank 0
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.flop_model.take()
        t_end = time.perf_counter()
        for i in range(warmup + steps):
            batch = next(batches)
            t_data = time.perf_counter()
            counter = FlopCounterMode(display=False) if count_flops and i == 0 and warmup else contextlib.nullcontext()
            with counter:
                loss = self.step(batch, generator)
            if not math.isfinite(loss):
                raise RuntimeError(f"{name}: loss is {loss} at step {i}")
            t_done = time.perf_counter()
            if isinstance(counter, FlopCounterMode):
                phase.counted_flops = counter.get_total_flops()
            phase.wait.append(t_data - t_end)  # step 0: from the phase's start (loader workers starting)
            phase.compute.append(t_done - t_data)
            phase.samples.append(len(batch["prompts"]))
            phase.flops.append(self.flop_model.take())
            phase.buckets.append(batch["bucket"])
            t_end = t_done
        phase.peak_gib = (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else max_rss()) / 2**30
        return phase


def max_rss() -> int:
    """This process's peak resident set (bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def hold(cfg: TrainConfig, n: int, pin: bool) -> list[dict]:
    """The first n batches a fresh loader gives, read now and kept in memory; its workers end here."""
    it = iter(TrainLoader(cfg.data, rank=0, world_size=1, pin_memory=pin))
    try:
        batches = [next(it) for _ in range(n)]
    finally:
        it.close()
    if pin:
        batches = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    return batches


# ---------------------------------------------------------------------------- reporting

def describe_machine(device: torch.device) -> list[str]:
    model = platform.processor() or "?"
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "load avg ?"
    lines = [f"machine: {platform.platform()}; {model}; cpu_count={os.cpu_count()} usable={usable}; {load}",
             (f"python {platform.python_version()}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
              f"diffusers {diffusers.__version__}")]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    else:
        lines.append("device: cpu")
    return lines


def _n(x: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:g}"


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "no MFU on CPU"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16:
        if key in name:
            return peak, f"{peak / 1e12:.0f} TFLOP/s ({name}, dense bf16)"
    return None, f"{name} not in PEAK_BF16: pass --peak-tflops"


def print_report(base: Phase, full: Phase, stepper: Stepper, peak: tuple[float | None, str], device: torch.device) -> None:
    mem = "max allocated GiB" if device.type == "cuda" else "max RSS GiB (process)"
    head = f"{'phase':<26} {'step s':>8} {'(min)':>8} {'compute s':>10} {'wait s':>8} {'samples/s':>10} {'data-wait':>10} {mem:>22}"
    print(head)
    print("-" * len(head))
    for p in (base, full):
        n = len(p.timed(p.compute))
        print(f"{p.name:<26} {p.step_s:>8.4f} {p.min_step_s:>8.4f} {sum(p.timed(p.compute)) / n:>10.4f} "
              f"{sum(p.timed(p.wait)) / n:>8.4f} {p.samples_per_s:>10.2f} {p.wait_frac:>10.3f} {p.peak_gib:>22.2f}")
    print(f"timed buckets (both phases): {dict(Counter(full.timed(full.buckets)))}")
    fm = stepper.flop_model
    per_step = sum(full.timed(full.flops)) / len(full.timed(full.flops))
    print(f"model FLOPs/step (mean, 2*T*(2N+N_train) + 12*L*T^2*d): {per_step:.4g}; N={_n(fm.n)} per-token block weights, "
          f"N_train={_n(fm.n_train)}, L={fm.layers}, d={fm.dim}, T={fm.tokens} tokens (last call)")
    if base.counted_flops is not None:
        print(f"flop counter, first warm-up step (hardware FLOPs: recompute, VAE/T5 when run): {base.counted_flops:.4g} "
              f"({base.counted_flops / base.flops[0]:.2f}x the model FLOPs of that step)")
    value, label = peak
    mfu = "" if value is None else f"; MFU {base.flops_per_s / value:.3f} compute-only, {full.flops_per_s / value:.3f} full"
    print(f"achieved: {base.flops_per_s / 1e12:.4g} TFLOP/s compute-only, {full.flops_per_s / 1e12:.4g} TFLOP/s full; "
          f"peak {label}{mfu}")
    print(f"full-phase compute / compute-only step: {sum(full.timed(full.compute)) / sum(base.timed(base.compute)):.3f} "
          f"(> 1: loader workers slowed the step itself)")
    if base.step_s > 1.05 * full.step_s:
        print("warning: the compute-only phase ran slower than the full one: the machine's load moved between "
              "phases; rerun with --repeat 3 (and --threads 1 on a shared CPU)")
    print(f"step/compute ratio: {base.step_s / full.step_s:.3f}")
    print(f"data-wait fraction: {full.wait_frac:.3f}")


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="a training config (TOML/YAML/JSON); default: tiny models and shards")
    ap.add_argument("--shape", choices=("tiny", "2b"), default="tiny", help="2b: a CogVideoX-2B-shaped transformer on a synthetic cache")
    ap.add_argument("--steps", type=int, help="timed steps per phase (default 20; 10 for --shape 2b)")
    ap.add_argument("--warmup", type=int, help="untimed steps before them (default 3; 2 for --shape 2b)")
    ap.add_argument("--frames", type=int, default=49, help="--shape 2b: pixel frames of the cached clips (8k+1, CogVideoX 1.0)")
    ap.add_argument("--height", type=int, default=480, help="--shape 2b: pixel height (multiple of 16)")
    ap.add_argument("--width", type=int, default=720, help="--shape 2b: pixel width (multiple of 16)")
    ap.add_argument("--batch-size", type=int, default=1, help="--shape 2b: samples per batch")
    ft = ap.add_mutually_exclusive_group()
    ft.add_argument("--lora", dest="full", action="store_false", help="--shape 2b: LoRA r128 a64 on attention (default)")
    ft.add_argument("--full", dest="full", action="store_true", help="--shape 2b: full finetune (fp32 master weights)")
    ap.set_defaults(full=False)
    ap.add_argument("--precision", choices=("bf16", "fp32"),
                    help="--shape 2b: bf16 (frozen weights bf16, bf16 autocast; default on CUDA) or fp32 (default on "
                         "CPU, where bf16 matmuls without AVX512-BF16/AMX are many times slower)")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                    help="override the config's (--shape 2b: on unless --no-gradient-checkpointing)")
    ap.add_argument("--loader-workers", type=int, help="DataLoader workers (default: the config's; 2 for tiny and 2b)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    ap.add_argument("--repeat", type=int, help="run the phase pair this many times, keep each phase's best (default 3 tiny, else 1)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: 1 for tiny, else torch's)")
    ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s for MFU (default: from the device name)")
    args = ap.parse_args(argv)
    if args.config and args.shape == "2b":
        ap.error("--config and --shape 2b are different setups: give one")
    shaped = args.shape == "2b"
    if not shaped and (args.precision or any(getattr(args, k) != ap.get_default(k) for k in ("frames", "height", "width", "batch_size"))):
        ap.error("--frames/--height/--width/--batch-size/--precision apply to --shape 2b (otherwise the config decides)")
    steps = args.steps if args.steps is not None else (10 if shaped else 20)
    warmup = args.warmup if args.warmup is not None else (2 if shaped else 3)
    tiny = not shaped and not args.config
    args.repeat = args.repeat if args.repeat is not None else (3 if tiny else 1)
    if steps < 1 or warmup < 0 or args.repeat < 1:
        ap.error("--steps and --repeat must be >= 1 and --warmup >= 0")
    # The tiny model gains nothing from intra-op threads, and on a shared 2-core machine spinning
    # OpenMP threads made its steps up to 10x slower at random (whichever phase the load hit).
    threads = args.threads or (1 if tiny else None)
    if threads:
        torch.set_num_threads(threads)
    if shaped and ((args.frames - 1) % 8 or args.height % 16 or args.width % 16):
        ap.error("--frames must be 8k+1 (CogVideoX 1.0) and --height/--width multiples of 16")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")

    root = Path(tempfile.mkdtemp(prefix="videomill_train_step_"))
    try:
        for ln in describe_machine(device):
            print(ln)
        t0 = time.perf_counter()
        if shaped:
            cfg, what = shape_setup(root, args)
        elif args.config:
            cfg, what = config_setup(args.config, args.loader_workers)
        else:
            cfg, what = tiny_setup(root, args.loader_workers)
        if args.gradient_checkpointing is not None:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, gradient_checkpointing=args.gradient_checkpointing))
        models = shaped_models(cfg, device) if shaped else load_models(cfg.model, device)
        stepper = Stepper(cfg, models, device)
        m, tr = cfg.model, models.transformer
        total = sum(p.numel() for p in tr.parameters())
        trained = sum(p.numel() for _, p in stepper.named)
        print(f"setup: {what} ({time.perf_counter() - t0:.1f} s)")
        print(f"model: transformer {_n(total)} params, {_n(trained)} trained "
              f"({f'LoRA r{m.lora.rank} a{m.lora.alpha:g}; frozen weights {m.dtype}, LoRA fp32' if m.lora else 'full finetune, fp32 weights'}); "
              f"autocast {cfg.run.mixed_precision}; gradient checkpointing {'on' if m.gradient_checkpointing else 'off'}")
        print(f"data: {cfg.data.num_workers} loader worker(s), buckets {[b.name + '/b' + str(b.batch_size) for b in cfg.data.buckets]}"
              f", image_ratio {cfg.data.image_ratio}; pin_memory {device.type == 'cuda'}")
        print(f"steps per phase: {warmup} warm-up + {steps} timed; phases: compute-only (held batches), then full "
              f"(TrainLoader){f', the pair run {args.repeat} times, best mean of each' if args.repeat > 1 else ''}")
        print()

        held = hold(cfg, warmup + steps, pin=device.type == "cuda")
        base = full = None
        for r in range(args.repeat):  # alternating, so load that comes and goes falls on both phases alike
            b = stepper.run("compute-only (held batches)", iter(held), warmup, steps, count_flops=r == 0)
            it = iter(TrainLoader(cfg.data, rank=0, world_size=1, pin_memory=device.type == "cuda"))
            try:
                f = stepper.run("full (TrainLoader)", it, warmup, steps)
            finally:
                it.close()
            if f.buckets != b.buckets:
                raise RuntimeError("the loader gave a different batch sequence than the held one: the phases are not comparable")
            if base is not None:
                b.counted_flops = base.counted_flops
            base = b if base is None or b.step_s < base.step_s else base
            full = f if full is None or f.step_s < full.step_s else full
        del held
        print_report(base, full, stepper, peak_flops(device, args.peak_tflops), device)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
