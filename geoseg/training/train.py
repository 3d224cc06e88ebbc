"""Training loop: weighted cross-entropy plus Dice, D4 augmentation, AdamW with warm-up and
cosine or poly decay, validation mIoU every epoch, best checkpoint kept, resumable."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from geoseg.engines.infer import resolve_device
from geoseg.errors import ChipError, OutputError, TrainingError, first_line
from geoseg.fs import atomic_path, check_output_path, remove_quietly
from geoseg.models import create_model, get_architecture, output_stride
from geoseg.models.checkpoint import ModelConfig, build_config, save_model
from geoseg.models.pretrained import load_pretrained
from geoseg.options import TrainOptions
from geoseg.training.chips import load_manifest, manifest_classes
from geoseg.training.datasets import ChipDataset
from geoseg.training.epoch import WeightAverage, class_weights, lr_lambda, run_epoch, validate
from geoseg.training.metrics import Scores
from geoseg.training.resume import load_state, resume_state_path
from geoseg.version import __version__

DEFAULT_ARCH = "unet-small"
#: Optimizer steps the automatic epoch count aims at, and its bounds.
AUTO_STEPS = 1000
AUTO_EPOCHS = (15, 150)
#: Half-life in epochs of the weight average validated and kept (0: the raw weights). Over three
#: seeds of the seven recipe scenes it raised the mean ratio to the forest (1.32 -> 1.34) and the
#: worst seed of Atlanta and Las Vegas (1.30 -> 1.36, 1.26 -> 1.36); docs/training.md.
DEFAULT_EMA = 3.0


def auto_dice_weight(classes: int) -> float:
    """The Dice term's weight beside cross-entropy: 0.5 for two classes, 1 for more. Dice is
    averaged over the classes in a batch, so it lifts rare classes most where there are several;
    over three seeds 1 raised New Brunswick (5 classes) from 1.72 to 1.98 and Sentinel-2 (8)
    from 1.70 to 1.80 times the forest, and lowered the four building scenes by 0.02-0.07
    (docs/training.md)."""
    return 0.5 if classes <= 2 else 1.0


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AMX tiles or AVX-512 BF16), where bf16
    autocast trains 1.2-1.7x as fast (docs/training.md); False where torch cannot tell (its CPU
    probes are private, so their absence counts as no)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def auto_epochs(steps_per_epoch: int) -> int:
    """Epochs for about ``AUTO_STEPS`` optimizer steps: many passes over a small chip set, few
    over a large one; early stopping usually ends training well before."""
    lo, hi = AUTO_EPOCHS
    return int(min(hi, max(lo, math.ceil(AUTO_STEPS / max(1, steps_per_epoch)))))


def auto_patience(epochs: int) -> int:
    """Epochs without a better validation mIoU after which training stops."""
    return max(10, epochs // 6)


def min_epochs(epochs: int) -> int:
    """Epochs always trained before early stopping may end a run: on a small validation set an
    untrained network that predicts the majority class can hold the best score for a while."""
    return epochs // 3


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    lr: float
    seconds: float
    val: dict[str, Any] | None


@dataclass
class TrainResult:
    """The model file written and how training went."""

    output: Path
    best_epoch: int
    #: validation mIoU of the kept epoch; None without validation chips (never a loss)
    best_miou: float | None
    history: list[EpochRecord] = field(default_factory=list)
    best_scores: Scores | None = None


def train(
    chips_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: TrainOptions | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    **keywords: Any,
) -> TrainResult:
    """Train an architecture on a chips folder and write the best model (by validation mIoU) to
    ``output``.

    ``options`` (:class:`geoseg.options.TrainOptions`), with any of its fields given as
    ``keywords`` replacing its own (``train(chips, "m.pt", arch="unet", epochs=30)``). ``ema``
    above 0 validates and keeps a moving average of the weights whose half-life is that many
    epochs (:class:`geoseg.training.epoch.WeightAverage`) instead of the raw weights."""
    o = TrainOptions.from_keywords(options, **keywords)
    arch, epochs, patience, batch_size, dice_weight = (
        o.arch,
        o.epochs,
        o.patience,
        o.batch_size,
        o.dice_weight,
    )
    lr, weight_decay, warmup_epochs, schedule, class_weighting = (
        o.lr,
        o.weight_decay,
        o.warmup_epochs,
        o.schedule,
        o.class_weighting,
    )
    device, seed, workers, amp, precision, channels_last = (
        o.device,
        o.seed,
        o.workers,
        o.amp,
        o.precision,
        o.channels_last,
    )
    pretrained, pretrained_bands = o.pretrained, o.pretrained_band_names
    ema = DEFAULT_EMA if o.ema is None else o.ema
    out = Path(output)
    state_path = resume_state_path(out)
    if not resume:
        check_output_path(out, overwrite, "model output")
    elif not state_path.exists():
        raise OutputError(f"nothing to resume: {state_path} not found; train without --resume")
    manifest = load_manifest(chips_dir)
    classes = manifest_classes(manifest)
    if len(classes) < 2:
        raise ChipError(
            f"chips in {chips_dir} hold {len(classes)} class(es); training needs at least 2"
        )
    names = [c.name for c in classes]
    values = [c.value for c in classes]
    get_architecture(arch)
    kwargs = o.architecture_arguments
    identity = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "classes": [[c.value, c.name] for c in classes],
        "bands": list(manifest["bands"]),
    }
    state: dict[str, Any] = {}
    if resume:
        state = load_state(state_path, identity)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed)
    network = create_model(arch, len(manifest["bands"]), len(classes), **kwargs)
    pretrained_from = None
    if pretrained is not None and not resume:  # a resumed run continues its own weights
        pretrained_from = load_pretrained(
            network, arch, pretrained, manifest["bands"], pretrained_bands
        )
        if not quiet:
            print(f"encoder starts from {pretrained_from}", file=sys.stderr, flush=True)
    if not resume:
        # a new run: the previous run's resume state must never be continued by a later --resume
        remove_quietly(state_path, *state_path.parent.glob(f".{state_path.name}.*.part*"))
    stride = output_stride(network)
    if manifest["size"] % stride:
        good = -(-manifest["size"] // stride) * stride
        raise ChipError(
            f"chip size {manifest['size']} is not a multiple of {arch}'s output stride {stride}; "
            f"re-chip with --size {good}"
        )
    mean, std = manifest["stats"]["mean"], manifest["stats"]["std"]
    train_ds = ChipDataset(chips_dir, manifest, "train", augment=True)
    val_ds = ChipDataset(chips_dir, manifest, "val")
    if len(train_ds) == 0:
        raise ChipError(f"{chips_dir} has no training chips; lower --val-fraction or add images")
    if len(val_ds) == 0 and not quiet:
        print(
            f"no validation chips in {chips_dir}: keeping the last epoch, with no score "
            "(chip with --val-fraction above 0 to measure one)",
            file=sys.stderr,
            flush=True,
        )
    config = build_config(
        network, arch, kwargs, manifest["bands"], mean, std, classes, manifest["ignore_value"]
    )
    network.to(dev)
    if batch_size is None:
        # at least four steps an epoch: a small chip set needs updates more than big batches
        batch_size = min(32 if dev.type == "cuda" else 16, max(2, len(train_ds) // 4))
    if dice_weight is None:
        dice_weight = auto_dice_weight(len(classes))
    if not (ema >= 0 and math.isfinite(ema)):
        raise TrainingError(f"--ema {ema} must be 0 (off) or a half-life in epochs above 0")
    if precision not in ("auto", "fp32", "bf16"):
        raise TrainingError(f"unknown --precision {precision!r}; use auto, fp32 or bf16")
    # auto: mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling), fp32 on
    # the CPU; bf16: bf16 autocast anywhere (CPUs with AMX or AVX-512 BF16 gain from it)
    use_amp = amp and (precision == "bf16" or (precision == "auto" and dev.type == "cuda"))
    amp_dtype = (
        torch.bfloat16
        if precision == "bf16" or dev.type != "cuda" or torch.cuda.is_bf16_supported()
        else torch.float16
    )
    if dev.type == "cpu" and precision == "auto" and not quiet and cpu_has_native_bf16():
        print(
            "this CPU computes bf16 in hardware: --precision bf16 trained 1.2-1.7x as fast here "
            "(2.1x for unet-small with --channels-last), at the same accuracy within noise "
            "(docs/training.md)",
            file=sys.stderr,
            flush=True,
        )
    if channels_last:
        network.to(memory_format=torch.channels_last)
    train_pixels = {
        int(k): int(v) for k, v in manifest["stats"]["class_pixels"].get("train", {}).items()
    }
    weights = class_weights(train_pixels, values, class_weighting).to(dev)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, best_miou, best_epoch = 0, -1.0, 0
    history: list[EpochRecord] = []
    gen = torch.Generator().manual_seed(seed)
    if resume:
        try:
            network.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainingError(
                f"cannot resume from {state_path}: its weights do not fit {arch} ({first_line(exc)[:120]}); "
                "train without --resume, with --overwrite"
            ) from None
        start_epoch, best_miou, best_epoch = (
            int(state["epoch"]),
            float(state["best_miou"]),
            int(state["best_epoch"]),
        )
        gen.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        history = [EpochRecord(**h) for h in state["history"]]
        batch_size = int(state["batch_size"])

    def make_loader(bs: int) -> DataLoader:
        sampler = (
            WeightedRandomSampler(
                train_ds.weights, num_samples=len(train_ds), replacement=True, generator=gen
            )
            if any(w != 1.0 for w in train_ds.weights)
            else None
        )
        return DataLoader(
            train_ds,
            batch_size=bs,
            shuffle=sampler is None,
            sampler=sampler,
            generator=gen,
            num_workers=workers,
            drop_last=len(train_ds) > bs,
            pin_memory=dev.type == "cuda",
        )

    loader = make_loader(batch_size)
    steps_per_epoch = max(1, len(loader))
    if epochs is None:
        epochs = (
            int(state["epochs"]) if resume and "epochs" in state else auto_epochs(steps_per_epoch)
        )
    if patience is None:
        patience = auto_patience(epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_lambda(epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch), schedule),
    )
    if resume:
        scheduler.load_state_dict(state["scheduler"])
        # the constructor set the step-0 rate; continue from the saved one
        for group, rate in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = rate
    average = WeightAverage(network, ema * steps_per_epoch) if ema > 0 else None
    if average is not None and resume and "ema" in state:
        average.network.load_state_dict(state["ema"])
        average.steps = int(state["ema_steps"])
    kept = average.network if average is not None else network  # what is validated and saved
    best_scores: Scores | None = None
    for epoch in range(start_epoch, epochs):
        if (
            len(val_ds)
            and patience
            and best_epoch
            and epoch - best_epoch >= patience
            and epoch >= min_epochs(epochs)
        ):
            if not quiet:
                print(
                    f"stopping early: no better validation mIoU for {patience} epochs",
                    file=sys.stderr,
                    flush=True,
                )
            break
        t0 = time.perf_counter()
        while True:
            try:
                loss_avg = run_epoch(
                    network,
                    loader,
                    optimizer,
                    scheduler,
                    scaler,
                    weights,
                    dice_weight,
                    dev,
                    use_amp,
                    amp_dtype,
                    quiet,
                    epoch,
                    epochs,
                    channels_last,
                    average,
                )
                break
            except torch.cuda.OutOfMemoryError:
                if batch_size <= 1:
                    raise TrainingError(
                        "out of GPU memory even with batch size 1; use a smaller arch or --device cpu"
                    ) from None
                batch_size //= 2
                torch.cuda.empty_cache()
                if not quiet:
                    print(
                        f"out of GPU memory: retrying epoch {epoch + 1} with batch size {batch_size}",
                        file=sys.stderr,
                        flush=True,
                    )
                loader = make_loader(batch_size)
        val_scores = validate(kept, val_ds, dev, names, batch_size) if len(val_ds) else None
        rec = EpochRecord(
            epoch + 1,
            loss_avg,
            optimizer.param_groups[0]["lr"],
            time.perf_counter() - t0,
            val_scores.as_dict() if val_scores is not None else None,
        )
        history.append(rec)
        if val_scores is None:
            improved = True  # nothing to choose by: the last epoch is kept
            miou = -1.0
        else:
            miou = -1.0 if math.isnan(val_scores.miou) else val_scores.miou
            improved = best_epoch == 0 or miou > best_miou
        if improved:
            best_miou, best_epoch, best_scores = miou, epoch + 1, val_scores
            _save_best(
                out,
                kept,
                config,
                manifest,
                chips_dir,
                history,
                best_epoch,
                val_scores,
                dict(
                    epochs=epochs,
                    patience=patience,
                    batch_size=batch_size,
                    lr=lr,
                    seed=seed,
                    schedule=schedule,
                    ema=ema,
                    class_weighting=class_weighting,
                    dice_weight=dice_weight,
                    pretrained=pretrained_from,
                ),
            )
        if not quiet:
            vtxt = (
                f"val mIoU {val_scores.miou:.4f} OA {val_scores.overall_accuracy:.4f}"
                if val_scores is not None
                else "no validation chips"
            )
            print(
                f"epoch {epoch + 1}/{epochs}  loss {loss_avg:.4f}  {vtxt}  "
                f"{rec.seconds:.1f}s{'  *best' if improved else ''}",
                file=sys.stderr,
                flush=True,
            )
        with atomic_path(state_path, ".pt") as tmp:
            torch.save(
                {
                    "model": {k: v.detach().cpu() for k, v in network.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "best_miou": best_miou,
                    "best_epoch": best_epoch,
                    "generator": gen.get_state(),
                    "rng": torch.get_rng_state(),
                    "history": [h.__dict__ for h in history],
                    "batch_size": batch_size,
                    "epochs": epochs,
                    "identity": json.dumps(identity, sort_keys=True),
                    **(
                        {
                            "ema": {
                                k: v.detach().cpu() for k, v in average.network.state_dict().items()
                            },
                            "ema_steps": average.steps,
                        }
                        if average is not None
                        else {}
                    ),
                },
                tmp,
            )
    return TrainResult(out, best_epoch, best_miou if len(val_ds) else None, history, best_scores)


def _save_best(
    out: Path,
    network: nn.Module,
    config: ModelConfig,
    manifest: dict[str, Any],
    chips_dir: Any,
    history: list[EpochRecord],
    best_epoch: int,
    scores: Scores | None,
    options: dict[str, Any],
) -> None:
    config.training = {
        "chips": str(Path(chips_dir).resolve()),
        "images": manifest.get("images", []),
        "train_chips": sum(1 for c in manifest["chips"] if c["split"] == "train"),
        "val_chips": sum(1 for c in manifest["chips"] if c["split"] == "val"),
        "chip_size": manifest["size"],
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "validation": scores.as_dict() if scores is not None else None,
        "options": options,
        "geoseg_version": __version__,
    }
    save_model(out, network, config)
