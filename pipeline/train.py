"""Train stage: a minibatch loop over tensors already in memory (on the GPU when training there).

Batches are slices of a shuffled index, and augmentation (random crop with
padding, horizontal flip) works on whole batches, so no per-image Python work
happens in the loop. On CUDA the loop also uses channels-last tensors and bf16
autocast; ``torch.compile`` is opt-in on any device.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipeline.data import PreparedData

log = logging.getLogger(__name__)


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
    augment_crop: int = 0  # zero padding in pixels before a random crop back to the input size; 0: off
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA (float16 with loss scaling where bf16 is missing); no effect on CPU
    channels_last: bool = True  # channels-last memory format on CUDA; no effect on CPU
    compile: bool = False  # train through torch.compile(model)


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
    seconds: float  # the whole loop, per-epoch dev scoring included
    images_seen: int
    dev_seconds: float = 0.0  # of ``seconds``, the time spent scoring dev after each epoch
    dev_logits: torch.Tensor | None = None  # float32 eager dev logits after the last epoch, on the CPU, else None

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else 0.0


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Build the optimizer named in the config."""
    # Models that train parts at different rates (a fine-tuned backbone) provide their own groups.
    params = model.param_groups(config.lr) if hasattr(model, "param_groups") else model.parameters()
    # The fused kernels update every parameter in one pass instead of a few small ops per
    # tensor. On a 2-core Xeon, Adam's step for small_cnn took 0.35 ms instead of 0.95 ms.
    # They need float parameters on the CPU or CUDA, which every registered model has.
    fused = {"fused": True} if _fused_supported(model) else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.momentum > 0, **fused)
    raise ValueError(f"unknown optimizer '{config.optimizer}'; use adam, adamw or sgd")


def _fused_supported(model: nn.Module) -> bool:
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return bool(parameters) and all(parameter.is_floating_point() and parameter.device.type in ("cpu", "cuda")
                                    for parameter in parameters)


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


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad a batch with zeros by ``padding`` pixels, then cut each image back to its size at a random offset.

    One gather does the whole batch: image ``i`` is ``padded[i, :, dy:dy + H, dx:dx + W]`` with
    its own ``dy, dx`` drawn uniformly from ``0 .. 2 * padding``. The zeros are the train mean
    once the images are normalized.
    """
    if padding <= 0:
        return images
    count, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator).to(device)
    rows = (offsets[0].view(count, 1) + torch.arange(height, device=device)).view(count, 1, height, 1)
    columns = (offsets[1].view(count, 1) + torch.arange(width, device=device)).view(count, 1, 1, width)
    batch = torch.arange(count, device=device).view(count, 1, 1, 1)
    channel = torch.arange(channels, device=device).view(1, channels, 1, 1)
    return padded[batch, channel, rows, columns]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of a batch horizontally with probability 1/2."""
    flip = torch.rand(len(images), generator=generator).to(images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Return the autocast dtype for training on ``device``: bf16 where CUDA supports it, else float16; None on CPU."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_model(model: nn.Module, data: PreparedData, config: TrainConfig, device: torch.device,
                on_epoch: Callable[[EpochResult], None] | None = None) -> TrainResult:
    """Train ``model`` on ``data.x['train']`` and score dev after each epoch.

    Args:
        model: a freshly built model; it is moved to ``device`` and contains the trained
            weights afterwards, also when the loop ran a compiled copy.
        data: normalized tensors; ``train`` and ``dev`` are used. Tensors already on
            ``device`` are used in place.
        config: optimization settings.
        device: where to train.
        on_epoch: called after each epoch; it may raise to stop training (Optuna pruning).

    Raises:
        Diverged: when the mean training loss of an epoch is NaN or infinite.
    """
    generator = torch.Generator().manual_seed(config.seed)
    channels_last = config.channels_last and device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if config.compile else model
    x_train = _to_device(data.x["train"], device, channels_last)
    y_train = data.y["train"].to(device)
    x_dev = _to_device(data.x["dev"], device, channels_last)
    dtype = autocast_dtype(device, config.amp)
    # float16 gradients can underflow, so they are scaled; bf16 has float32's range and needs no scaler.
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(batch_slices(len(x_train), config.batch_size))
    scheduler = None
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()

    history: list[EpochResult] = []
    images_seen = 0
    dev_seconds = 0.0
    dev_logits = None
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
            if config.augment_crop:
                inputs = random_crop(inputs, config.augment_crop, generator)
            if config.augment_flip:
                inputs = random_flip(inputs, generator)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)

            with _autocast(device, dtype):
                logits = net(inputs)
                loss = loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()

            loss_sum += loss.detach().float() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            images_seen += len(targets)

        # One host sync per epoch: checking every batch would stall a GPU.
        train_loss = float(loss_sum) / len(order)
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}")
        dev_start = time.perf_counter()
        dev_logits = predict(net if config.compile else inference_copy(model), x_dev, device, dtype=dtype)
        dev_seconds += time.perf_counter() - dev_start
        dev_predicted = dev_logits.argmax(1)
        dev_accuracy = float((dev_predicted == data.y["dev"].cpu()).float().mean())
        result = EpochResult(epoch, train_loss, float(correct) / len(order), dev_accuracy,
                             epoch_lr, time.perf_counter() - epoch_start, dev_predicted.numpy())
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    # Later stages reuse the dev logits only when plain float32 eager inference would give the same values.
    exact = dtype is None and not config.compile
    return TrainResult(history, time.perf_counter() - loop_start, images_seen, dev_seconds,
                       dev_logits if exact else None)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """Find each Conv2d directly followed by a BatchNorm2d with running statistics inside an nn.Sequential."""
    pairs = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            for index in range(len(children) - 1):
                conv, norm = children[index], children[index + 1]
                if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
                        and norm.track_running_stats and norm.running_mean is not None):
                    pairs.append((module, index))
    return pairs


def inference_copy(model: nn.Module) -> nn.Module:
    """Return ``model`` for inference, with batch norm folded into the convolution before it.

    In eval mode a BatchNorm2d is a fixed per-channel scale and shift, so it can be
    applied once to the weights of the Conv2d before it instead of to every
    activation. Deployed models are run that way. Logits agree with the unfolded
    model to float rounding (about 1e-8 for small_cnn), and scoring is faster: on a
    2-core AMD EPYC, small_cnn (depth 3, width 32) scored the 1,257 digits training
    images in 33 ms instead of 46 ms. The returned model is an eval-mode copy; ``model``
    is not changed. Without such pairs ``model`` itself is returned. Not for a
    ``torch.compile`` wrapper: pass the module it wraps. Every inference path (dev scoring, evaluation, latency, reruns) uses
    this, so their figures agree with each other exactly.
    """
    if not _conv_bn_pairs(model):
        return model
    # The copy shares the model's parameters and buffers, which inference only reads,
    # so only the module objects are copied, not the weights.
    shared = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    folded = copy.deepcopy(model, shared).eval()
    for sequential, index in _conv_bn_pairs(folded):
        sequential[index] = fuse_conv_bn_eval(sequential[index], sequential[index + 1])
        sequential[index + 1] = nn.Identity()
    return folded


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 128,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return the model's float32 logits for ``images`` on the CPU, in eval mode, under autocast to ``dtype`` if given.

    The default of 128 was measured, not derived: on a 2-core AMD EPYC, the 6-layer small_cnn
    scored 288 CIFAR-10 images in 0.163 s as one batch of 512 and in 0.089 s in batches of 128.
    """
    model.eval()
    outputs = []
    with _autocast(device, dtype):
        for start in range(0, len(images), batch_size):
            outputs.append(model(images[start:start + batch_size].to(device)).float())
    # One copy to the host at the end instead of one synchronizing copy per batch.
    return torch.cat(outputs).cpu() if outputs else torch.empty(0)
