"""The configuration of one training run, validated once, and its stable run id.

A :class:`RunConfig` is what ``fusioncli train`` options and one sweep grid point turn into.
It is frozen and validated in ``__post_init__`` (every problem named by its flag, all at once).
:meth:`RunConfig.resolve` replaces ``auto`` by what this machine does; the resolved config is
saved with every result and hashed into the run id.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fusioncli.errors import BadInputError

SCHEDULERS = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class RunConfig:
    """One training run: model, optimiser schedule, seed, device and precision.

    Defaults are the seed notebook's: late fusion on the seed backbone, Adam lr 1e-4 with
    cosine annealing over 15 epochs, batch 32, seed 51.
    """

    strategy: str = "late"
    backbone: str = "seed"
    lr: float = 1e-4
    scheduler: str = "cosine"
    epochs: int = 15
    batch_size: int = 32
    seed: int = 51
    device: str = "auto"
    precision: str = "auto"
    limit_per_class: int | None = None
    # At most this many *training* samples per class (the first ones); validation untouched, so
    # runs of different training-set sizes are scored on the same samples (learning curves).
    train_per_class: int | None = None
    # Probability that a training sample has one modality (RGB or LiDAR, 50/50) replaced by
    # zeros; 0.0 (the default) trains exactly as before the option existed.
    modality_dropout: float = 0.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real):
            problems.append(f"--lr must be a number (got {self.lr!r})")
        elif not math.isfinite(self.lr) or self.lr <= 0:
            problems.append(f"--lr must be > 0 (got {self.lr:g})")
        else:
            # 1 and 1.0 must hash to the same run id
            object.__setattr__(self, "lr", float(self.lr))
        if not _is_int(self.epochs) or self.epochs < 1:
            problems.append(f"--epochs must be an integer >= 1 (got {self.epochs!r})")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"--batch-size must be an integer >= 1 (got {self.batch_size!r})")
        if not _is_int(self.seed) or self.seed < 0:
            problems.append(f"--seed must be an integer >= 0 (got {self.seed!r})")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"--scheduler must be one of {', '.join(SCHEDULERS)} (got {self.scheduler!r})")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            problems.append(f"--device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.limit_per_class is not None and (not _is_int(self.limit_per_class) or self.limit_per_class < 1):
            problems.append(f"--limit-per-class must be an integer >= 1 (got {self.limit_per_class!r})")
        if self.train_per_class is not None and (not _is_int(self.train_per_class) or self.train_per_class < 1):
            problems.append(f"--train-per-class must be an integer >= 1 (got {self.train_per_class!r})")
        if isinstance(self.modality_dropout, bool) or not isinstance(self.modality_dropout, numbers.Real):
            problems.append(f"--modality-dropout must be a number in [0, 1) (got {self.modality_dropout!r})")
        elif not 0 <= self.modality_dropout < 1:  # also false for NaN
            problems.append(f"--modality-dropout must be >= 0 and < 1 (got {self.modality_dropout:g})")
        else:
            # 0 and 0.0 must hash to the same run id
            object.__setattr__(self, "modality_dropout", float(self.modality_dropout))
        problems.extend(_registry_problems(self.strategy, self.backbone))
        if problems:
            raise BadInputError(problems)
        for name in ("epochs", "batch_size", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("limit_per_class", "train_per_class"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))

    def resolve(self) -> RunConfig:
        """This config with ``auto`` device/precision replaced by what this machine does.

        Raises :class:`BadInputError` when the device or precision asked for is unavailable.
        """
        # Imported here: resolving asks torch about the machine; the config itself is torch-free.
        from fusioncli.train.device import resolve_device, resolve_precision

        device = resolve_device(self.device)
        precision = resolve_precision(self.precision, device)
        return replace(self, device=device, precision=precision)

    @property
    def is_resolved(self) -> bool:
        return self.device != "auto" and self.device != "cuda" and self.precision != "auto"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (the ``config`` of a run record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error.

        Keys added after a record was written (``modality_dropout``, ``train_per_class``) take
        their defaults, so older records load unchanged.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BadInputError(f"unknown run config key(s): {', '.join(unknown)}")
        return cls(**values)


def _registry_problems(strategy: str, backbone: str) -> list[str]:
    """Problems with the strategy/backbone names, checked against the model registry."""
    # Imported here: the registry pulls in torch model code, which config users may not need yet.
    from fusioncli.models import BACKBONES, strategy_names

    problems = []
    names = strategy_names()
    if strategy not in names:
        problems.append(f"--strategy must be one of {', '.join(names)} (got {strategy!r})")
    if backbone not in BACKBONES:
        problems.append(f"--backbone must be one of {', '.join(BACKBONES)} (got {backbone!r})")
    return problems


# Fields added after run ids were first published -> the value at which they change nothing.
_HASH_OMITTED_AT: dict[str, Any] = {"modality_dropout": 0.0, "train_per_class": None}


def run_id(config: RunConfig, dataset_fingerprint: str) -> str:
    """A stable 16-hex-digit id for (resolved config, dataset): same inputs, same id.

    The config is resolved first, so ``auto`` on a CPU machine and ``cpu`` name the same run.
    Fields added later are left out of the hash while they have their neutral default, so
    the runs of stores written before them keep their ids.
    """
    resolved = config if config.is_resolved else config.resolve()
    hashed = resolved.to_dict()
    for name, neutral in _HASH_OMITTED_AT.items():
        if hashed[name] == neutral:
            del hashed[name]
    payload = json.dumps({"config": hashed, "dataset": dataset_fingerprint}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
