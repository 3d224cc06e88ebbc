"""The model family side by side: parameters, receptive field, CPU forward throughput, and
validation mIoU after the same short training on the Sentinel-2 / OSM scene, with and without
the dense CRF and D4 test-time augmentation.

    python benchmarks/models.py [--chips build/builtin-model/chips] [--epochs 20] [--only NAME ...]

The chips are the built-in model's recipe's (workflows/builtin-model.yaml) when that ran; if
missing, they are made here with the shipped model's hand-set options (128 px, stride 64,
256-px blocks), with which docs/models.md's table was measured.
Every network is trained with the same recipe (AdamW, lr 2e-3, cosine, batch 16, seed 0) for
the same number of epochs; VGG-based networks run at a quarter of VGG-16's width so they train
on a CPU in minutes (the table says so). Writes benchmarks/models.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.classes import IGNORE_VALUE
from geoseg.engines.crf import CRFParams
from geoseg.engines.infer import InferenceOptions, forward
from geoseg.models.dilation import GriddingWarning
from geoseg.models.load import load_model
from geoseg.training.chips import load_manifest, make_chips, manifest_classes
from geoseg.training.datasets import ChipDataset
from geoseg.training.metrics import Scores, confusion_matrix
from geoseg.training.train import train

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "labeled" / "s2_brandenburg_osm"
VGG = {"width": 0.25, "fc_channels": 512}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "unet transpose": ("unet", {"depth": 3, "base_width": 16, "upsample": "transpose"}),
    "unet unpool": ("unet", {"depth": 3, "base_width": 16, "upsample": "unpool"}),
    "unet bilinear": ("unet", {"depth": 3, "base_width": 16, "upsample": "bilinear"}),
    "fcn32s": ("fcn32s", dict(VGG)),
    "fcn16s": ("fcn16s", dict(VGG)),
    "fcn8s": ("fcn8s", dict(VGG)),
    "deeplabv1 (rates 2,2,2)": ("deeplabv1", {"width": 0.25, "fc_channels": 256}),
    "deeplabv1 hdc (1,2,5)": ("deeplabv1", {"width": 0.25, "fc_channels": 256, "dilations": "hdc"}),
    "deeplabv1 hdc + MSc": (
        "deeplabv1",
        {"width": 0.25, "fc_channels": 256, "dilations": "hdc", "msc": True},
    ),
    "deeplabv3plus mobilenetv3": ("deeplabv3plus", {"backbone": "mobilenetv3"}),
    "deeplabv3plus resnet50": ("deeplabv3plus", {"backbone": "resnet50"}),
}
VARIANTS = {
    "plain": InferenceOptions(),
    "crf": InferenceOptions(crf=CRFParams()),
    "d4": InferenceOptions(tta="d4"),
    "d4+crf": InferenceOptions(tta="d4", crf=CRFParams()),
}


def ensure_chips(chips: Path) -> None:
    if (chips / "chips.json").exists():
        return
    classes = "1=farmland,2=forest,3=grass,4=meadow,5=residential,6=scrub,7=water,8=wetland"
    from geoseg.classes import parse_class_names

    make_chips(
        [(str(SCENE / "image.tif"), str(SCENE / "label.tif"))],
        chips,
        size=128,
        stride=64,
        split_block=256,
        ignore_value=0,
        min_labeled=0.05,
        val_fraction=0.2,
        seed=0,
        class_names=parse_class_names(classes),
    )


def forward_mps(network: torch.nn.Module, bands: int, size: int = 512, runs: int = 3) -> float:
    x = np.random.default_rng(0).normal(size=(1, bands, size, size)).astype(np.float32)
    forward(network, x, torch.device("cpu"))
    t = time.perf_counter()
    for _ in range(runs):
        forward(network, x, torch.device("cpu"))
    return runs * size * size / 1e6 / (time.perf_counter() - t)


def scores(
    network: torch.nn.Module, val: ChipDataset, names: list[str], options: InferenceOptions
) -> Scores:
    k = len(names)
    cm = np.zeros((k, k), np.int64)
    for i in range(0, len(val), 8):
        x = val.images[i : i + 8]
        y = val.labels[i : i + 8].astype(np.int64)
        pred = forward(network, x, torch.device("cpu"), options).argmax(1).numpy()
        cm += confusion_matrix(np.where(y == IGNORE_VALUE, -1, y), pred, k)
    return Scores(cm, names)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", default=str(ROOT / "build" / "builtin-model" / "chips"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--work", default=str(ROOT / "build" / "models-bench"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "models.json"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument(
        "--throughput-only",
        action="store_true",
        help="re-measure forward throughput of the trained models, all in this one run",
    )
    args = ap.parse_args()
    chips, work = Path(args.chips), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ensure_chips(chips)
    manifest = load_manifest(chips)
    names = [c.name for c in manifest_classes(manifest)]
    val = ChipDataset(chips, manifest, "val")
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("rows", {})
    if not args.throughput_only:
        results.update(
            epochs=args.epochs,
            threads=torch.get_num_threads(),
            torch=torch.__version__,
            val_chips=len(val),
        )
    for label, (arch, kwargs) in CONFIGS.items():
        if args.only and label not in args.only:
            continue
        model_file = work / (
            label.replace(" ", "_")
            .replace(",", "")
            .replace("(", "")
            .replace(")", "")
            .replace("+", "p")
            + ".pt"
        )
        if args.throughput_only:
            if label in results["rows"] and model_file.exists():
                model = load_model(model_file)
                results["rows"][label]["forward_mps"] = forward_mps(
                    model.network, model.config.in_channels
                )
                print(label, results["rows"][label]["forward_mps"], flush=True)
            continue
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GriddingWarning)
            res = train(
                chips,
                model_file,
                arch=arch,
                arch_kwargs=kwargs,
                epochs=args.epochs,
                batch_size=16,
                lr=2e-3,
                seed=0,
                overwrite=True,
                quiet=True,
            )
        train_s = time.perf_counter() - t
        model = load_model(model_file)
        net = model.network
        row = {
            "arch": arch,
            "kwargs": kwargs,
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "stride": model.output_stride,
            "receptive_field": model.receptive_field,
            "forward_mps": forward_mps(net, model.config.in_channels),
            "train_seconds": train_s,
            "best_epoch": res.best_epoch,
        }
        for variant, options in VARIANTS.items():
            row[f"miou_{variant}"] = scores(net, val, names, options).miou
        results["rows"][label] = row
        out.write_text(json.dumps(results, indent=1))
        print(label, json.dumps(row), flush=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: dict[str, Any]) -> str:
    lines = [
        "| architecture | params (M) | stride | RF radius (px) | CPU forward (MP/s) | val mIoU | + CRF | + D4 TTA | + D4 + CRF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in results["rows"].items():
        lines.append(
            f"| {label} | {r['params_m']:.2f} | {r['stride']} | {r['receptive_field']} | {r['forward_mps']:.3f} | "
            f"{r['miou_plain']:.3f} | {r['miou_crf']:.3f} | {r['miou_d4']:.3f} | {r['miou_d4+crf']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
