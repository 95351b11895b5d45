"""The in-memory form of a prepared dataset, as training consumes it.

:func:`fusioncli.data.cache.load_cache` returns a :class:`PreparedData`; training moves it to
its device once and batches by index (no per-sample DataLoader). The LiDAR model input (XYZA)
is either stored whole (``xyza``) or projected from ``depth`` batch by batch
(:meth:`PreparedData.lidar`), with the same values either way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class PreparedData:
    """All samples of a prepared dataset as tensors (channels first)."""

    # Shapes: H = W = 64 for the DLI layout; a --manifest dataset has its own H x W.
    rgb: torch.Tensor  # (N, 4, H, W) uint8 RGBA; models get rgb.float() / 255
    # (N, 4, H, W) float32 with the seed normalisation (see data.projection), or None: then
    # lidar() projects depth with ``directions`` per batch.
    xyza: torch.Tensor | None
    depth: torch.Tensor  # (N, H, W) float32 depth in metres (camera: z-depth), 50.0 = no return
    labels: torch.Tensor  # (N,) int64 class index
    is_val: torch.Tensor  # (N,) bool, True for validation samples
    class_names: tuple[str, ...]
    fingerprint: str  # content fingerprint of the raw data + prepare options
    # (3, H, W): data.projection.unit_directions, or a camera's non-unit pixel directions
    # (data.geometry.directions); depth * a / 50 * directions is the XYZ input either way.
    directions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        for name in ("rgb", "xyza", "depth", "is_val"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"PreparedData.{name} has {value.shape[0]} rows, labels {n}")
        if self.xyza is None and self.directions is None:
            raise ValueError("PreparedData needs xyza or the directions to project depth with")

    def lidar(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """The XYZA model input of the samples at ``idx``: stored rows, or projected now.

        Projected batches are channels_last (as training stores them) and bit-identical to
        the stored form (:func:`fusioncli.data.projection.xyza_from_directions`).
        """
        if self.xyza is not None:
            return self.xyza[idx]
        from fusioncli.data.projection import xyza_from_directions

        assert self.directions is not None  # __post_init__: no xyza means directions
        depth = self.depth[idx]
        out = torch.empty(
            (depth.shape[0], 4, *depth.shape[-2:]), dtype=depth.dtype, device=depth.device,
            memory_format=torch.channels_last,
        )  # fmt: skip
        return xyza_from_directions(depth, self.directions, out=out)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_indices(self) -> torch.Tensor:
        return torch.nonzero(~self.is_val, as_tuple=False).flatten()

    @property
    def val_indices(self) -> torch.Tensor:
        return torch.nonzero(self.is_val, as_tuple=False).flatten()

    def subset(self, indices: torch.Tensor) -> PreparedData:
        """The samples at ``indices`` (same fingerprint tag plus a note of the subset)."""
        idx = indices.to(self.labels.device)
        return replace(
            self,
            rgb=self.rgb[idx],
            xyza=None if self.xyza is None else self.xyza[idx],
            depth=self.depth[idx],
            labels=self.labels[idx],
            is_val=self.is_val[idx],
        )

    def limit_per_class(self, limit: int | None) -> PreparedData:
        """Keep at most ``limit`` samples per class *in each split* (the first ones, in order).

        Deterministic, so a limited run is reproducible and its fingerprint is well defined.
        """
        if limit is None:
            return self
        if limit < 1:
            raise ValueError("limit per class must be at least 1")
        keep = []
        for split in (False, True):
            for c in range(self.num_classes):
                idx = torch.nonzero((self.labels == c) & (self.is_val == split)).flatten()
                keep.append(idx[:limit])
        indices = torch.sort(torch.cat(keep)).values
        sub = self.subset(indices)
        return replace(sub, fingerprint=f"{self.fingerprint}:limit{limit}")

    def limit_train_per_class(self, limit: int | None) -> PreparedData:
        """Keep at most ``limit`` *training* samples per class (the first ones); every validation
        sample stays, so models trained on different amounts are scored on the same samples.
        """
        if limit is None:
            return self
        if limit < 1:
            raise ValueError("training samples per class must be at least 1")
        keep = [torch.nonzero(self.is_val).flatten()]
        for c in range(self.num_classes):
            keep.append(torch.nonzero((self.labels == c) & ~self.is_val).flatten()[:limit])
        sub = self.subset(torch.sort(torch.cat(keep)).values)
        return replace(sub, fingerprint=f"{self.fingerprint}:train{limit}")

    def to(self, device: torch.device | str) -> PreparedData:
        """A copy with every tensor on ``device`` (data lives on the training device)."""
        return replace(
            self,
            rgb=self.rgb.to(device),
            xyza=None if self.xyza is None else self.xyza.to(device),
            directions=None if self.directions is None else self.directions.to(device),
            depth=self.depth.to(device),
            labels=self.labels.to(device),
            is_val=self.is_val.to(device),
        )
