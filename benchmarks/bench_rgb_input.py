"""Why the camera models learnt slowly on `hard` (issue 15): one change to the RGB input at a time.

    .venv/bin/python benchmarks/bench_rgb_input.py [--variants seed,global,standard] [--seeds 53,54,55,56]
        [--per-class 1250] [--epochs 8] [--threads 1] [--cache DIR]

Renders `synth --difficulty hard` (or uses a prepared `--cache`), then trains rgb-only with the
seed's recipe (batch 16, lr 4e-4 constant, seed backbone, bf16 where native) once per variant x
seed, and prints each run's validation accuracy after every epoch and the first epoch at which
it left chance (>= 60 %; the ceiling is ~75 %, the camera of about half the samples failed).

Variants (everything else identical -- same data, seeds, thread count):

* ``seed``: the seed's input, pixel / 255 (`--rgb-norm seed`).
* ``global``: R, G, B standardised with the training set's per-channel mean and std (one
  affine map for every image: tests whether the input's *scale* is the cause).
* ``standard``: each image standardised on its own (`--rgb-norm standard`, the product's option).
* ``xN`` (e.g. ``x4``): pixel / 255 times N, clamped nowhere (brightness alone, no centring).

The variants other than the product's are a forward pre-hook added in this script.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import fusioncli.models as models
from fusioncli.config import RunConfig
from fusioncli.data.cache import load_cache, prepare
from fusioncli.data.synth import write_dataset
from fusioncli.train.loop import train_run

CHANCE_LEFT = 0.60


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--variants", default="seed,global,standard")
    parser.add_argument("--seeds", default="53,54,55,56")
    parser.add_argument("--per-class", type=int, default=1250)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, help="a prepared hard cache to use instead of rendering one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("command: .venv/bin/python benchmarks/bench_rgb_input.py " + shlex.join(sys.argv[1:]), flush=True)

    scratch = None
    cache = args.cache
    if cache is None:
        scratch = Path(tempfile.mkdtemp(prefix="bench_rgb_input."))
        write_dataset(scratch / "raw", per_class=args.per_class, seed=0, difficulty="hard")
        cache = scratch / "cache"
        prepare(scratch / "raw", cache, val_fraction=0.2, split_seed=0)
    try:
        data = load_cache(cache)
        train = data.rgb[~data.is_val][:, :3].float() / 255
        mean = train.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
        std = train.std(dim=(0, 2, 3)).view(1, 3, 1, 1)
        print(f"training images: R, G, B mean {mean.flatten().tolist()}, std {std.flatten().tolist()}\n", flush=True)
        real_create = models.create_model

        for variant in [v for v in args.variants.split(",") if v]:

            def create(*a: Any, variant: str = variant, **k: Any) -> torch.nn.Module:
                model = real_create(*a, **k)
                if variant in ("global",) or variant.startswith("x"):

                    def pre(module: torch.nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
                        rgb, xyza = inputs
                        colour = rgb[:, :3]
                        if variant == "global":
                            colour = (colour - mean.to(colour)) / std.to(colour)
                        else:
                            colour = colour * float(variant[1:])
                        return (torch.cat([colour, rgb[:, 3:]], dim=1), xyza)

                    model.register_forward_pre_hook(pre)
                return model

            models.create_model = create  # train_run builds through the registry module
            for seed in [int(s) for s in args.seeds.split(",") if s]:
                t0 = time.perf_counter()
                cfg = RunConfig(
                    strategy="rgb-only", lr=4e-4, scheduler="constant", epochs=args.epochs, batch_size=16, seed=seed,
                    device="cpu", rgb_norm="standard" if variant == "standard" else "seed",
                )  # fmt: skip
                curve = [row["val_accuracy"] for row in train_run(cfg, data).record.history]
                left = next((i + 1 for i, v in enumerate(curve) if v >= CHANCE_LEFT), None)
                print(
                    f"{variant:<9} seed {seed}: " + " ".join(f"{100 * v:.0f}" for v in curve)
                    + f"   left chance at epoch {left if left is not None else '-'}"
                    + f"  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )  # fmt: skip
        models.create_model = real_create
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
