"""A tiny model and data for the training-loop tests (also the DDP worker run under torchrun)."""
import sys

import torch
from torch import nn

from visualsearch.seeding import step_seed
from visualsearch.train import TrainConfig, train


def toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))


W = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def batch_fn(step):
    g = torch.Generator().manual_seed(step_seed(7, step))
    x = torch.randn(8, 4, generator=g)
    return x, x @ W + 0.1 * torch.randn(8, 1, generator=g)


def step_fn(model, batch):
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    return loss, {"batch_size": x.shape[0]}


def cfg(**kw):
    base = dict(steps=20, lr=0.05, optimizer="sgd", momentum=0.9, checkpoint_every=10, progress=False, seed=3,
                lr_milestones=(15,))
    base.update(kw)
    return TrainConfig(**base)


if __name__ == "__main__":  # DDP worker: torchrun --nproc-per-node=2 train_toy.py OUT
    import torch.distributed as dist

    model = toy_model()
    result = train(model, step_fn, batch_fn, cfg(steps=60, checkpoint_every=0))
    rank = dist.get_rank()
    torch.save({"state": {k: v.clone() for k, v in model.state_dict().items()},
                "loss": result.log["loss"].tolist()}, f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()
