"""Training throughput (chips per second) per architecture and memory layout / precision.

    nice python benchmarks/training_speed.py [--size 64] [--batch 8] [--reps 3] [--threads 2]

One optimizer step (forward, cross-entropy, backward, AdamW) on random 4-band chips, for each
architecture in fp32, channels-last, bf16 autocast, and bf16 autocast + channels-last; the settings are
interleaved and each keeps its fastest repetition, so the ratios within one run hold even on a
busy machine. Writes benchmarks/training_speed.json; docs/training.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from geoseg.models import create_model

OUT = Path(__file__).resolve().parent / "training_speed.json"
ARCHS: list[tuple[str, str, dict[str, Any]]] = [
    ("unet-small", "unet-small", {}),
    ("unet", "unet", {}),
    ("unet-resnet18", "unet", {"encoder": "resnet18"}),
    ("deeplabv3plus-mobilenet", "deeplabv3plus", {"backbone": "mobilenetv3"}),
]
SETTINGS = {
    "fp32": (False, False),
    "channels-last": (False, True),
    "bf16": (True, False),
    "bf16+channels-last": (True, True),
}


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AMX tiles or AVX-512 BF16), as train's ``auto`` asks."""
    from geoseg.training.train import cpu_has_native_bf16

    return cpu_has_native_bf16()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, arch, kwargs in ARCHS:
        torch.manual_seed(0)
        net = create_model(arch, 4, 8, **kwargs).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(args.batch, 4, args.size, args.size)
        y = torch.randint(0, 8, (args.batch, args.size, args.size))
        best: dict[str, float] = {}

        def step(bf16: bool, cl: bool) -> None:
            xx = x.contiguous(memory_format=torch.channels_last) if cl else x
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(xx).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(args.reps):
            for label, (bf16, cl) in SETTINGS.items():
                net.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                step(bf16, cl)  # warm-up for this layout
                t = time.perf_counter()
                step(bf16, cl)
                dt = time.perf_counter() - t
                best[label] = min(best.get(label, float("inf")), dt)
        row = {"arch": name, **{k: round(args.batch / v, 2) for k, v in best.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "reps": args.reps,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "native_bf16": native_bf16(),
    }
    OUT.write_text(json.dumps({"setup": meta, "chips_per_second": rows}, indent=1))
    print(f"\n{'arch':<26}" + "".join(f"{k:>20}" for k in SETTINGS))
    for r in rows:
        print(f"{r['arch']:<26}" + "".join(f"{r[k]:>20.2f}" for k in SETTINGS))


if __name__ == "__main__":
    main()
