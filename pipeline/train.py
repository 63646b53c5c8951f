"""Train stage: a minibatch loop over tensors already in memory.

Batches are slices of a shuffled index, so no per-image work happens in the loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.data import PreparedData


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings of one trial."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 10
    schedule: str = "cosine"
    augment_flip: bool = False
    seed: int = 0


@dataclass(frozen=True)
class EpochResult:
    """Figures of one finished epoch."""

    epoch: int  # 0-based
    train_loss: float  # mean over the epoch's batches, in training mode
    train_accuracy: float  # running accuracy over the epoch, in training mode
    dev_accuracy: float  # after the epoch, in eval mode
    lr: float  # learning rate used during the epoch
    seconds: float
    dev_predicted: np.ndarray  # predicted dev labels after the epoch


@dataclass(frozen=True)
class TrainResult:
    """The per-epoch history and the time spent in the loop."""

    history: list[EpochResult]
    seconds: float
    images_seen: int

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else 0.0


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Build the optimizer named in the config."""
    # Models that train parts at different rates (a fine-tuned backbone) provide their own groups.
    params = model.param_groups(config.lr) if hasattr(model, "param_groups") else model.parameters()
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    raise ValueError(f"unknown optimizer '{config.optimizer}'; use adam, adamw or sgd")


MIN_BATCH = 4  # smaller training batches give batch norm too few values per channel


def batch_slices(count: int, batch_size: int) -> list[slice]:
    """Cut ``count`` items into batches, merging a last batch smaller than 4 into the one before.

    Batch norm cannot normalize a batch of one in training mode, and on a batch of
    two or three its gradients can be large enough to overflow the weights in one
    SGD step. So a short last batch joins the previous one instead of being dropped.
    """
    starts = list(range(0, count, batch_size))
    slices = [slice(start, min(start + batch_size, count)) for start in starts]
    if len(slices) > 1 and slices[-1].stop - slices[-1].start < MIN_BATCH:
        slices[-2] = slice(slices[-2].start, count)
        slices.pop()
    return slices


def train_model(model: nn.Module, data: PreparedData, config: TrainConfig, device: torch.device,
                on_epoch: Callable[[EpochResult], None] | None = None) -> TrainResult:
    """Train ``model`` on ``data.x['train']`` and score dev after each epoch.

    Args:
        model: a freshly built model; it is moved to ``device``.
        data: normalized tensors; ``train`` and ``dev`` are used.
        config: optimization settings.
        device: where to train.
        on_epoch: called after each epoch; it may raise to stop training (Optuna pruning).

    Raises:
        Diverged: when a batch loss is NaN or infinite.
    """
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    x_train = data.x["train"].to(device)
    y_train = data.y["train"].to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(batch_slices(len(x_train), config.batch_size))
    scheduler = None
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()

    history: list[EpochResult] = []
    images_seen = 0
    loop_start = time.perf_counter()
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        epoch_lr = optimizer.param_groups[0]["lr"]
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for batch in batch_slices(len(order), config.batch_size):
            index = order[batch]
            inputs, targets = x_train[index], y_train[index]
            if config.augment_flip:
                flip = torch.rand(len(inputs), generator=generator).to(device) < 0.5
                inputs = torch.where(flip.view(-1, 1, 1, 1), inputs.flip(-1), inputs)

            logits = model(inputs)
            loss = loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()

            loss_sum += loss.detach() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            images_seen += len(targets)

        # One host sync per epoch: checking every batch would stall a GPU.
        train_loss = float(loss_sum) / len(order)
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}")
        dev_logits = predict(model, data.x["dev"], device)
        dev_predicted = dev_logits.argmax(1)
        dev_accuracy = float((dev_predicted == data.y["dev"]).float().mean())
        result = EpochResult(epoch, train_loss, float(correct) / len(order), dev_accuracy,
                             epoch_lr, time.perf_counter() - epoch_start, dev_predicted.numpy())
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return TrainResult(history, time.perf_counter() - loop_start, images_seen)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Return the model's logits for ``images`` on the CPU, in eval mode."""
    model.eval()
    outputs = [model(images[start:start + batch_size].to(device)).float().cpu()
               for start in range(0, len(images), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)
