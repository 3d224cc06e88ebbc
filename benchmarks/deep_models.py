"""A deep network people bring, tiled by geoseg and by pytorch-toolbelt's huge-image recipe: wall
time, peak memory and pixels differing from one forward pass over the whole scene, in one run.

    pip install -e '.[bench]'
    python benchmarks/deep_models.py [--size 4096] [--work build/deep-models]

The network is segmentation-models-pytorch's ``Unet("resnet18", classes=6)`` with random weights
(seed 0, ``encoder_weights=None``: nothing is downloaded), exported to ONNX and imported with
``geoseg import`` (which measures its receptive field). The scene is ``size``² 3-band uint8,
seeded. Each run is its own process (its peak resident memory is the kernel's count for it):

* ``reference``: ONNX Runtime over the whole scene, mirror-padded by the margin geoseg uses;
* ``toolbelt``: ``ImageSlicer`` / ``TileMerger``, tiles of 512 with 64 px of overlap, weights
  averaged, PyTorch eager, batches of 4;
* ``geoseg``: ``geoseg predict`` with its defaults (the automatic tile within the default memory
  budget); the one-off measurement of the model's memory per tile runs before it, timed apart.

Writes benchmarks/deep_models.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import tiled_profile

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 6
MEAN = [123.7, 116.3, 103.5]
STD = [58.4, 57.1, 57.4]


def build_model(work: Path) -> Path:
    """The geoseg ONNX model (exported and imported once per work folder)."""
    import torch

    out = work / "unet-resnet18.geoseg.onnx"
    if out.exists():
        return out
    import segmentation_models_pytorch as smp

    from geoseg.models.onnx import import_model

    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=CLASSES).eval()
    torch.save(net.state_dict(), work / "unet-resnet18.pth")
    raw = work / "unet-resnet18.onnx"
    free = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 256, 256),),
        str(raw),
        dynamo=False,
        opset_version=18,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": free, "logits": free},
    )
    import_model(
        raw, out, {i: f"class{i}" for i in range(CLASSES)}, MEAN, STD, ["red", "green", "blue"]
    )
    return out


def build_scene(work: Path, size: int) -> Path:
    """A seeded 3-band uint8 scene: blocky fields with noise, in 512² blocks."""
    import rasterio

    path = work / f"scene-{size}.tif"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 256, (3, size // 32 + 1, size // 32 + 1)).astype(np.float32)
    data = np.repeat(np.repeat(cells, 32, 1), 32, 2)[:, :size, :size]
    data = (data + rng.normal(0, 12, data.shape)).clip(0, 255).astype(np.uint8)
    profile = tiled_profile(size, 3, "uint8", (400000, 5800000))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


# --- the runs, each in its own process -------------------------------------------------------


def run_reference(model: Path, scene: Path, out: Path) -> dict[str, Any]:
    """Classes from one ONNX Runtime pass over the whole scene, mirror-padded by geoseg's margin
    (and to the output stride)."""
    from geoseg.models.load import read_model_config
    from geoseg.models.ort_session import make_session
    from geoseg.tiling import auto_margin, round_up

    cfg = read_model_config(model).config
    margin = auto_margin(cfg.receptive_field, cfg.output_stride)
    x = read(scene).astype(np.float32)
    h, w = x.shape[1:]
    x = (x - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    ph, pw = (
        round_up(h + 2 * margin, cfg.output_stride) - h - margin,
        round_up(w + 2 * margin, cfg.output_stride) - w - margin,
    )
    x = np.pad(x, ((0, 0), (margin, ph), (margin, pw)), mode="reflect")[None]
    session = make_session(str(model), "cpu")
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    classes = logits.argmax(0)[margin : margin + h, margin : margin + w].astype(np.uint8)
    np.save(out, classes)
    return {"margin": margin}


def run_toolbelt(work: Path, scene: Path, out: Path) -> dict[str, Any]:
    """pytorch-toolbelt's huge-image recipe: 512² tiles, 64 px overlap, mean weights, eager."""
    import segmentation_models_pytorch as smp
    import torch
    from pytorch_toolbelt.inference.tiles import ImageSlicer, TileMerger

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=CLASSES).eval()
    net.load_state_dict(torch.load(work / "unet-resnet18.pth"))
    image = np.moveaxis(read(scene), 0, -1)
    tiler = ImageSlicer(image.shape, tile_size=(512, 512), tile_step=(448, 448))
    tiles = tiler.split(image)
    merger = TileMerger(tiler.target_shape, CLASSES, tiler.weight)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        for i in range(0, len(tiles), 4):
            batch = torch.from_numpy(np.stack(tiles[i : i + 4])).permute(0, 3, 1, 2).float()
            merger.integrate_batch(net((batch - mean) / std), tiler.crops[i : i + 4])
    merged = np.moveaxis(merger.merge().numpy(), 0, -1)
    classes = tiler.crop_to_orignal_size(merged).argmax(-1).astype(np.uint8)
    np.save(out, classes)
    return {"tiles": len(tiles)}


def run_geoseg(model: Path, scene: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """``geoseg predict`` with its defaults, in this process (the CLI's own code path)."""
    from click.testing import CliRunner

    from geoseg.cli.main import cli

    result = CliRunner().invoke(
        cli,
        [
            "predict",
            str(scene),
            "-o",
            str(out.with_suffix(".tif")),
            "--model",
            str(model),
            "--overwrite",
            *extra,
        ],
        catch_exceptions=False,
    )
    if result.exit_code:
        raise SystemExit(result.output)
    np.save(out, read(out.with_suffix(".tif"))[0])
    first = next((line for line in result.output.splitlines() if line.startswith("geoseg:")), "")
    return {"first_line": first}


def run_measure(model: Path, scene: Path) -> dict[str, Any]:
    """The one-off measurement of the model's memory and time per tile (cached afterwards)."""
    from geoseg.options import PredictOptions
    from geoseg.prediction.plan import plan_predict

    plan = plan_predict(
        scene, scene.with_name("plan-only.tif"), model, PredictOptions(), overwrite=True
    )
    assert plan.tile_choice is not None
    return {
        "tile": plan.tile,
        "overlap_factor": plan.grid.overlap_factor,
        "choice": plan.tile_choice.describe(),
    }


def child(name: str, work: Path, size: int, extra: list[str]) -> None:
    model, scene = work / "unet-resnet18.geoseg.onnx", work / f"scene-{size}.tif"
    out = work / f"{name}-{size}.npy"
    start = time.perf_counter()
    if name == "reference":
        info = run_reference(model, scene, out)
    elif name == "toolbelt":
        info = run_toolbelt(work, scene, out)
    elif name == "measure":
        info = run_measure(model, scene)
    else:
        info = run_geoseg(model, scene, out, extra)
    info["wall_s"] = time.perf_counter() - start
    print(json.dumps(info))


def spawn(name: str, work: Path, size: int, extra: list[str] = []) -> dict[str, Any]:
    """Run ``name`` in a child process: its result, wall time and peak resident memory."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--work",
        str(work),
        "--size",
        str(size),
        "--",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak resident memory
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode})")
    info: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    info["peak_mb"] = round(usage.ru_maxrss / 1024)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "deep-models")
    parser.add_argument("--child", default=None)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args.work, args.size, args.extra)
        return
    build_model(args.work)
    build_scene(args.work, args.size)
    load = os.getloadavg()
    runs: dict[str, dict[str, Any]] = {}
    for name in ["measure", "geoseg", "toolbelt"] + ([] if args.skip_reference else ["reference"]):
        runs[name] = spawn(name, args.work, args.size)
        print(name, runs[name], file=sys.stderr)
    ref_path = args.work / f"reference-{args.size}.npy"
    ref = np.load(ref_path) if ref_path.exists() else None
    for name in ("geoseg", "toolbelt") if ref is not None else ():
        got = np.load(args.work / f"{name}-{args.size}.npy")
        runs[name]["differing_pct"] = float((got != ref).mean() * 100)
    result = {
        "size": args.size,
        "cores": len(os.sched_getaffinity(0)),
        "load_before": load,
        "load_after": os.getloadavg(),
        "runs": runs,
    }
    (ROOT / "benchmarks" / "deep_models.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| run ({args.size}², {result['cores']} cores) | wall | peak memory | pixels differing from one whole-scene forward |"
    )
    print("| --- | --- | --- | --- |")
    for name in ("toolbelt", "geoseg", "reference"):
        r = runs.get(name)
        if r:
            print(
                f"| {name} | {r['wall_s']:.1f} s | {r['peak_mb'] / 1000:.2f} GB | "
                f"{r.get('differing_pct', 0.0):.2f} % |"
            )
    print(
        f"one-off measurement before geoseg's first run: {runs['measure']['wall_s']:.1f} s "
        f"({runs['measure']['choice']}; tile {runs['measure']['tile']})"
    )


if __name__ == "__main__":
    main()
