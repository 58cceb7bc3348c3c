"""The one training loop every notebook uses.

Why one loop: checkpoints, exact resume, progress bars, CSV logs and DistributedDataParallel are the same
for a triplet embedding, a face trunk or a MAAF model; only the batch and the loss differ. The caller gives

- `batch_fn(step) -> batch`: a pure function of the step (it seeds its own RNG from `step_seed`), and
- `step_fn(model, batch) -> (loss, {name: float})`.

Because the batch, the dropout masks (the global torch RNG is reseeded from the step) and the optimizer
state are all functions of the step and the checkpoint, a run interrupted at step t and resumed ends with
the same weights as a run that went straight through.

Under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on
GPU); every rank calls `batch_fn(step)` and keeps its own contiguous slice of each tensor along dim 0, so
the global batch is the same as on one process. Only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from . import atomic, progress
from .distributed import dist_info
from .seeding import step_seed


@dataclass
class TrainConfig:
    steps: int                         # optimizer steps in total (not epochs)
    lr: float                          # base learning rate (scaled per parameter group by lr_scale)
    optimizer: str = "sgd"             # "sgd" or "adam"
    momentum: float = 0.9              # SGD momentum
    nesterov: bool = True              # SGD Nesterov momentum (the triplet paper's choice)
    weight_decay: float = 0.0          # L2 penalty applied by the optimizer
    adam_eps: float = 1e-8             # Adam epsilon (the CFQ paper uses 1e-4)
    lr_milestones: tuple = ()          # steps at which the learning rate is multiplied by lr_gamma
    lr_gamma: float = 0.1              # factor applied at each milestone
    schedule: str = "step"             # "step": lr_milestones/lr_gamma; "one_cycle": PyTorch's OneCycleLR (lr rises
                                       # to `lr` then anneals, SGD momentum cycles 0.95 -> 0.85 -> 0.95), per step
    warmup_fraction: float = 0.3       # one_cycle: fraction of the steps spent rising to `lr` (OneCycleLR pct_start)
    checkpoint_every: int = 0          # save a checkpoint every N steps (0: only at the end)
    log_every: int = 10                # progress-bar refresh and CSV flush interval, in steps
    seed: int = 0                      # seeds the per-step RNG (dropout, augmentation inside step_fn)
    progress: bool = True              # show a progress bar (visualsearch.progress)
    desc: str = "training"             # the bar's label, naming the run (its last line stays in the output)
    device: str = "cpu"                # "cpu", "cuda" or "cuda:N"
    grad_clip: float = 0.0             # clip the global gradient norm to this value (0: no clipping)
    identity: str = ""                 # what is trained, filled by the caller: a hash of the model configuration,
                                       # the loss and the data fingerprint (see `identity_of`); part of the fingerprint

    def fingerprint(self) -> str:
        """Hash of the fields that change the result (not progress/logging/checkpoint cadence): the
        optimisation settings and `identity` (model, loss, data), so that a checkpoint is resumed only by the
        training that wrote it. An empty identity leaves the hash as it was before the field existed."""
        d = asdict(self)
        for k in ("checkpoint_every", "log_every", "progress", "desc", "device"):
            d.pop(k)
        if d["schedule"] == "step":  # the fields of the one-cycle schedule leave step-schedule hashes as they were
            d.pop("schedule")
            d.pop("warmup_fraction")
        if not d["identity"]:
            d.pop("identity")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


PRECISIONS = ("fp32", "bf16")  # the numeric precisions of a forward pass (a notebook's `precision` parameter)


def autocast(device, precision: str = "fp32"):
    """A forward pass's numeric precision: "bf16" runs convolutions and matrix products in bfloat16 under
    torch.autocast (weights, optimizer state, batch-norm statistics and the loss stay float32), "fp32" is plain
    float32. Why: on CPUs with AMX or AVX512-BF16 (this project's machines) and on tensor-core GPUs, a ResNet's
    training step runs 1.5-4x faster in bf16 with channels-last weights (`channels_last`); the step of a model of
    small matrix products (MAAF's fusion on frozen maps) gains little. Used inside a `step_fn` around the
    forward pass; evaluation stays float32 unless a caller asks otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def channels_last(model: nn.Module) -> nn.Module:
    """`model` with its 4-d weights in channels-last layout (in place), the layout oneDNN's CPU convolutions
    and cuDNN's bf16 ones run fastest in; a convolution given an ordinary (NCHW) input then answers in
    channels-last too, and the numbers are the same up to float rounding."""
    return model.to(memory_format=torch.channels_last)


def identity_of(*parts) -> str:
    """A TrainConfig.identity from JSON-able descriptions of the model, the loss and the data (e.g. the result
    cache key of the training): equal parts, equal identity."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    model: nn.Module                   # the trained model (unwrapped from DDP)
    log: pd.DataFrame                  # one row per step: step, loss, lr, step_fn metrics, eval metrics
    steps_done: int                    # steps completed (== cfg.steps unless stopped)
    wall_s: float                      # seconds spent in this call (not counting earlier resumed parts)
    resumed_from: int = 0              # the step a checkpoint was resumed from (0: fresh start)
    extra: dict = field(default_factory=dict)


class CheckpointMismatch(RuntimeError):
    """A checkpoint in run_dir was written by a run with another configuration."""


def _init_distributed(device: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _shard(obj: Any, rank: int, world: int) -> Any:
    """This rank's contiguous slice (dim 0) of every tensor in a batch."""
    if isinstance(obj, torch.Tensor) and obj.dim() > 0:
        n = obj.shape[0] // world
        return obj[rank * n:(rank + 1) * n]
    if isinstance(obj, dict):
        return {k: _shard(v, rank, world) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_shard(v, rank, world) for v in obj)
    return obj


def make_optimizer(model: nn.Module, cfg: TrainConfig, param_groups=None) -> torch.optim.Optimizer:
    """SGD or Adam over `param_groups` ({"params", "lr_scale"}), defaulting to all trainable parameters."""
    if param_groups is None:
        param_groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
    groups = []
    for g in param_groups:
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": cfg.lr * g.get("lr_scale", 1.0),
                           "lr_scale": g.get("lr_scale", 1.0)})
    if not groups:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}' (valid: sgd, adam)")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Base learning rate at `step` under the step schedule."""
    return cfg.lr * cfg.lr_gamma ** sum(step >= m for m in cfg.lr_milestones)


def train(model: nn.Module, step_fn: Callable, batch_fn: Callable[[int], Any], cfg: TrainConfig,
          run_dir=None, param_groups=None, eval_fn: Callable | None = None, eval_every: int = 0) -> TrainResult:
    """Train `model` for cfg.steps steps, resuming from run_dir/checkpoint.pt when present."""
    rank, world = dist_info()
    device = torch.device(cfg.device)
    if world > 1:
        _init_distributed(cfg.device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model.to(device)
    optimizer = make_optimizer(model, cfg, param_groups)
    if cfg.schedule not in ("step", "one_cycle"):
        raise ValueError(f"unknown schedule '{cfg.schedule}' (valid: step, one_cycle)")
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                     total_steps=cfg.steps, pct_start=cfg.warmup_fraction)
                 if cfg.schedule == "one_cycle" else None)
    run_dir = Path(run_dir) if run_dir else None
    ckpt_path = run_dir / "checkpoint.pt" if run_dir else None
    rows: list[dict] = []
    start = 0
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"] != cfg.fingerprint():
            raise CheckpointMismatch(
                f"{ckpt_path} was written by a run with another training configuration "
                f"(fingerprint {ckpt['config']}, this run {cfg.fingerprint()}); use another run_dir or delete it")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["schedule"])
        start, rows = ckpt["step"], ckpt["log"]
        if device.type == "cpu" and ckpt.get("threads"):
            # CPU float results depend on the intra-op thread count, which can change during a run (numba
            # starting its OpenMP pool at a process's first retrieval resets it): resume with the count the
            # run had when it saved, so that the resumed run computes exactly what the uninterrupted one did
            torch.set_num_threads(ckpt["threads"])
        if rank == 0:
            progress.note(f"{cfg.desc}: resumed from the checkpoint at step {start} of {cfg.steps} ({ckpt_path})",
                          disable=not cfg.progress)
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def save(step: int) -> None:
        if ckpt_path is None or rank != 0:
            return
        atomic.torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                           "schedule": scheduler.state_dict() if scheduler is not None else None,
                           "log": rows, "config": cfg.fingerprint(), "threads": torch.get_num_threads()}, ckpt_path)
        atomic.write_text(run_dir / "log.csv", pd.DataFrame(rows).to_csv(index=False))

    t0 = time.perf_counter()
    step = start
    # A step that fails half-way (Ctrl-C, a non-finite loss) has already moved the model's buffers (BatchNorm
    # running statistics) in its forward pass; they are put back before the completed steps are saved, so
    # that a resumed run is exactly the uninterrupted one. Parameters and optimizer state only change in
    # optimizer.step(), after which the step counts as completed.
    buffers = [b for b in model.buffers() if b is not None] if ckpt_path is not None and rank == 0 else []
    snapshot = [torch.empty_like(b) for b in buffers]  # the buffers as the last completed step left them
    in_step = False
    bar = progress.bar(total=cfg.steps, initial=start, desc=cfg.desc, unit="step", disable=not cfg.progress)
    try:
        for step in range(start, cfg.steps):
            if scheduler is None:
                lr = lr_at(cfg, step)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g["lr_scale"]
            else:
                lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_scale"]
            torch.manual_seed(step_seed(cfg.seed, step, stream=1))
            batch = batch_fn(step)
            if world > 1:
                batch = _shard(batch, rank, world)
            if buffers:
                torch._foreach_copy_(snapshot, buffers)  # one fused copy on a GPU
            in_step = True
            trained.train()
            loss, metrics = step_fn(trained, _to_device(batch, device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; last good checkpoint kept")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            row = {"step": step + 1, "loss": float(loss.detach()), "lr": lr, **{k: float(v) for k, v in metrics.items()}}
            rows.append(row)  # the step is complete once the optimizer has stepped
            in_step = False
            done = step + 1
            if eval_fn is not None and eval_every and (done % eval_every == 0 or done == cfg.steps):
                trained.eval()
                with torch.no_grad():
                    row.update({k: float(v) for k, v in eval_fn(model, done).items()})
            if done % max(cfg.log_every, 1) == 0 or done == cfg.steps:
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)  # drawn with the next update
            bar.update(1)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                save(done)
        step = cfg.steps
        save(cfg.steps)
    except BaseException:
        if in_step and buffers:  # the failing step's forward pass is undone
            with torch.no_grad():
                torch._foreach_copy_(buffers, snapshot)
        save(len(rows))  # every completed step is kept; the failing one is not
        raise
    finally:
        bar.close()
    return TrainResult(model=model, log=pd.DataFrame(rows), steps_done=step, wall_s=time.perf_counter() - t0,
                       resumed_from=start)
