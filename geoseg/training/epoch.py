"""One epoch of training and one validation pass: the loss (weighted cross-entropy plus Dice), the
class weights, the learning-rate schedule and the weight average."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from geoseg.classes import IGNORE_VALUE
from geoseg.errors import TrainingError
from geoseg.progress import Progress
from geoseg.training.datasets import ChipDataset
from geoseg.training.metrics import Scores, confusion_matrix


class WeightAverage:
    """Exponential moving average of a network's weights (Polyak averaging), updated after every
    optimizer step; validated and saved in place of the raw weights, which on small chip sets
    jump from epoch to epoch. Float buffers (batch-norm statistics) are averaged too."""

    def __init__(self, network: nn.Module, half_life_steps: float) -> None:
        self.network = copy.deepcopy(network).eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.decay = 0.5 ** (1.0 / max(half_life_steps, 1e-9))
        self.steps = 0

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        # the first steps follow the network closely, so the start's random weights fade fast
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, cur in zip(self.network.state_dict().values(), network.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur.detach(), 1.0 - decay)
            else:
                avg.copy_(cur)


def class_weights(pixels: dict[int, int], values: list[int], mode: str) -> torch.Tensor:
    """Per-class loss weights from train pixel counts: inverse frequency, its square root, or none."""
    counts = np.array([max(pixels.get(v, 0), 1) for v in values], dtype=np.float64)
    if mode == "none":
        w = np.ones_like(counts)
    elif mode == "inverse":
        w = counts.sum() / counts
    elif mode == "sqrt":
        w = np.sqrt(counts.sum() / counts)
    else:
        raise TrainingError(f"unknown --class-weights {mode!r}; use inverse, sqrt or none")
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_VALUE
) -> torch.Tensor:
    """Soft Dice over labelled pixels, averaged over the classes present in the batch."""
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    probs = torch.softmax(logits.float(), dim=1) * valid
    onehot = F.one_hot(target.clamp(max=k - 1) * (target != ignore_index), k).permute(0, 3, 1, 2)
    onehot = onehot.float() * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    if not present.any():
        return logits.sum() * 0.0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1.0 - dice[present].mean()


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    """Linear warm-up, then cosine (to 1%) or poly(0.9) decay, as a multiplier of the base LR."""
    if schedule not in ("cosine", "poly"):
        raise TrainingError(f"unknown --schedule {schedule!r}; use cosine or poly")

    def f(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        t = min(max(t, 0.0), 1.0)
        if schedule == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
        return max((1 - t) ** 0.9, 0.01)

    return f


@torch.no_grad()
def validate(
    network: nn.Module,
    dataset: ChipDataset,
    device: torch.device,
    names: list[str],
    batch_size: int,
) -> Scores:
    """Scores of ``network`` on every labelled pixel of ``dataset``."""
    network.eval()
    k = len(names)
    cm = np.zeros((k, k), dtype=np.int64)
    for i in range(0, len(dataset), batch_size):
        x = torch.from_numpy(dataset.images[i : i + batch_size]).to(device)
        y = dataset.labels[i : i + batch_size].astype(np.int64)
        pred = network(x).argmax(1).cpu().numpy()
        y = np.where(y == IGNORE_VALUE, -1, y)
        cm += confusion_matrix(y, pred, k)
    return Scores(cm, names)


def run_epoch(
    network: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    weights: torch.Tensor,
    dice_weight: float,
    dev: torch.device,
    use_amp: bool,
    amp_dtype: torch.dtype,
    quiet: bool,
    epoch: int,
    epochs: int,
    channels_last: bool = False,
    average: WeightAverage | None = None,
) -> float:
    network.train()
    progress = Progress(len(loader), unit=f"batches (epoch {epoch + 1}/{epochs})", quiet=quiet)
    total, n = 0.0, 0
    for x, y in loader:
        x = x.to(dev, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            logits = network(x)
            loss = F.cross_entropy(logits.float(), y, weight=weights, ignore_index=IGNORE_VALUE)
            if dice_weight:
                loss = loss + dice_weight * dice_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            continue  # a batch with no labelled pixel gives NaN cross-entropy
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if average is not None:
            average.update(network)
        total += float(loss.detach())
        n += 1
        progress.update(1, int(x.shape[0] * x.shape[2] * x.shape[3]))
    progress.close()
    return total / max(n, 1)
