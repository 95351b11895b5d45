"""Why the LiDAR models learnt slowly: one candidate cause changed at a time, same seeds.

    .venv/bin/python benchmarks/bench_lidar_input.py [--difficulty easy] [--per-class 500]
        [--epochs 6] [--seeds 51,52,53] [--variants seed,nearest,centroid,...]
        [--scene '{"clutter": 1}'] [--strategy lidar-only] [--threads 1]

Renders one dataset (`write_dataset`, the preset plus `--scene` SceneParams overrides, synth seed
0), prepares it with a 20 % validation split and trains `--strategy` (default lidar-only, seed
backbone, batch 16, lr 4e-4 constant) once per variant and seed, printing the validation
accuracy after every epoch and the first epoch at >= 60 % ("left chance"). Each variant changes
one thing against `seed` (the seed notebook's input and training):

* LiDAR input, computed from the seed's XYZA for every sample before training: `scale10` and
  `scale1` (x, y, z divided by 10 or 1 instead of 50), `centroid` (x, y, z in metres minus the
  centroid of the sample's returns), `standard` (each channel standardised by its training-set
  mean and std), `mask-only` (x, y, z zeroed: the silhouette alone), `xyz-only` (a zeroed);
* `nearest` -- the product's `--lidar-norm nearest` (fusioncli/models/inputs.py);
* training: `lr1e-3`, `lr1e-4`, `lr2e-3`; initialisation: `kaiming` (He-normal weights, zero
  biases, instead of PyTorch's default).

Scene geometry is a `--scene` override (e.g. `{"distance_range": [22, 28], "size_range":
[2.25, 3.5]}`: the objects 2.5x farther and 2.5x larger, the same LiDAR footprint), and the
script prints each class's mean LiDAR footprint (pixels with a return) and nearest return.
Figures: benchmarks/RESULTS.md, "Why the LiDAR models learnt slowly".
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fusioncli.config import RunConfig
from fusioncli.data.cache import load_cache, prepare
from fusioncli.data.dataset import PreparedData
from fusioncli.data.projection import MAX_RANGE
from fusioncli.data.synth import difficulty_params, write_dataset
from fusioncli.train.loop import train_run


def _scaled(divisor: float) -> Callable[..., torch.Tensor]:
    return lambda xyz, a, train: xyz * MAX_RANGE / divisor


def _centroid(xyz: torch.Tensor, a: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    metres = xyz * MAX_RANGE
    count = a.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    return (metres - metres.sum(dim=(2, 3), keepdim=True) / count) * a


def _standard(xyz: torch.Tensor, a: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    mean = xyz[train].mean(dim=(0, 2, 3), keepdim=True)
    std = xyz[train].std(dim=(0, 2, 3), keepdim=True)
    return (xyz - mean) / std


# name -> (input transform or None, RunConfig overrides, initialisation)
VARIANTS: dict[str, tuple[Callable[..., torch.Tensor] | None, dict[str, Any], str]] = {
    "seed": (None, {}, "default"),
    "nearest": (None, {"lidar_norm": "nearest"}, "default"),
    "scale10": (_scaled(10.0), {}, "default"),
    "scale1": (_scaled(1.0), {}, "default"),
    "centroid": (_centroid, {}, "default"),
    "standard": (_standard, {}, "default"),
    "mask-only": (lambda xyz, a, train: torch.zeros_like(xyz), {}, "default"),
    "xyz-only": (lambda xyz, a, train: xyz, {"_mask": False}, "default"),
    "lr1e-3": (None, {"lr": 1e-3}, "default"),
    "lr1e-4": (None, {"lr": 1e-4}, "default"),
    "lr2e-3": (None, {"lr": 2e-3}, "default"),
    "kaiming": (None, {}, "kaiming"),
}


def with_input(data: PreparedData, transform: Callable[..., torch.Tensor], keep_mask: bool) -> PreparedData:
    """``data`` whose stored XYZA is the seed's form passed through ``transform``."""
    everything = torch.arange(len(data))
    xyza = data.lidar(everything).contiguous()
    xyz, a = xyza[:, :3], xyza[:, 3:]
    new_xyz = transform(xyz, a, ~data.is_val)
    return replace(data, xyza=torch.cat([new_xyz, a if keep_mask else torch.zeros_like(a)], dim=1).contiguous())


def kaiming_init(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--difficulty", default="easy")
    parser.add_argument("--scene", default="{}", help="SceneParams overrides as JSON")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", default="51,52,53")
    parser.add_argument("--strategy", default="lidar-only")
    parser.add_argument("--variants", default="seed,nearest,centroid,scale1,scale10,standard,mask-only,xyz-only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "_work")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    scene = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.scene).items()}
    print("command: .venv/bin/python benchmarks/bench_lidar_input.py " + shlex.join(sys.argv[1:]))
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_lidar_input.", dir=args.dir))
    try:
        write_dataset(
            scratch / "raw", per_class=args.per_class, seed=0, difficulty=args.difficulty,
            params=difficulty_params(args.difficulty, **scene),
        )  # fmt: skip
        prepare(scratch / "raw", scratch / "cache", val_fraction=0.2, split_seed=0)
        data = load_cache(scratch / "cache")
        hit = data.depth < MAX_RANGE
        for label, name in enumerate(data.class_names):
            rows = data.labels == label
            nearest = torch.where(hit[rows], data.depth[rows], torch.inf).amin(dim=(1, 2))
            print(
                f"{name}: LiDAR footprint {hit[rows].sum(dim=(1, 2)).float().mean():.0f} px, "
                f"nearest return {nearest[torch.isfinite(nearest)].mean():.2f} m"
            )
        from fusioncli import models

        build = models.create_model
        for variant in args.variants.split(","):
            transform, overrides, init = VARIANTS[variant]
            overrides = dict(overrides)
            keep_mask = overrides.pop("_mask", True)
            work = data if transform is None else with_input(data, transform, keep_mask)

            def create(*a: Any, _init: str = init, **k: Any) -> torch.nn.Module:
                model = build(*a, **k)
                if _init == "kaiming":
                    kaiming_init(model)
                return model

            models.create_model = create  # the loop builds through it
            for seed in [int(s) for s in args.seeds.split(",")]:
                t0 = time.perf_counter()
                settings: dict[str, Any] = {"lr": 4e-4, **overrides}
                cfg = RunConfig(
                    strategy=args.strategy, backbone="seed", scheduler="constant", epochs=args.epochs, batch_size=16,
                    seed=seed, device="cpu", **settings,
                )  # fmt: skip
                curve = [row["val_accuracy"] for row in train_run(cfg, work).record.history]
                left = next((i + 1 for i, v in enumerate(curve) if v >= 0.6), None)
                print(
                    f"{variant:<10} seed {seed}: " + " ".join(f"{100 * v:3.0f}" for v in curve)
                    + f"   left chance: {'epoch ' + str(left) if left else 'no'} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )  # fmt: skip
        models.create_model = build
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
