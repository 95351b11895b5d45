"""The configuration of one training run, its field metadata, and its stable run id.

A :class:`RunConfig` is what ``fusioncli train`` options and one sweep grid point turn into.
It is frozen and validated in ``__post_init__`` (every problem named by its flag, all at once).
:meth:`RunConfig.resolve` replaces ``auto`` by what this machine does; the resolved config is
saved with every result and hashed into the run id.

Each field carries a :class:`FieldInfo` (its flag, help, choices, whether it is numeric, a
sweep grid axis, a data limit, and how it enters the run id). Everything that lists the
fields -- the CLI options of ``train`` and ``sweep``, grid parsing, the results store's
columns, report filters and the id hash -- is derived from that metadata, so adding a field is
one edit here plus its use. This module is torch-free: a ``--help`` or a ``report`` must not
pay for torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from fusioncli.errors import BadInputError
from fusioncli.machine import DEVICE_PATTERN, PRECISIONS, resolve_device, resolve_precision

SCHEDULERS = ("cosine", "constant")
# What the LiDAR branch sees (fusioncli.models.inputs): the seed's XYZA, or relative to the nearest surface.
LIDAR_NORMS = ("seed", "nearest")
# What the camera branch sees (fusioncli.models.inputs): the seed's pixel / 255, or each image standardised.
RGB_NORMS = ("seed", "standard")
# The fields that pick a model's input steps (create_model's keyword arguments of the same names).
INPUT_NORM_FIELDS = ("lidar_norm", "rgb_norm")

# A Checker validates one field value: (problem or None, the normalised value).
Checker = Callable[[str, Any], tuple[str | None, Any]]


class _Always:
    """Marker: the field was in the run id from the start (never left out of the hash)."""

    def __repr__(self) -> str:
        return "ALWAYS_HASHED"


ALWAYS_HASHED: Any = _Always()


@dataclass(frozen=True)
class FieldInfo:
    """What a RunConfig field means to the CLI, the sweep grid, the store and the run id."""

    flag: str
    help: str
    check: Checker
    short: str | None = None
    numeric: bool = False
    # Static choices (CLI choice lists, shell completion); registry-backed names complete lazily.
    choices: tuple[str, ...] | None = None
    # Sweep grid axis: the comma-list flag, its help, its default, and the expand_grid keyword.
    grid_flag: str | None = None
    grid_help: str | None = None
    grid_default: str | None = None
    axis: str | None = None
    # None means "no limit": reports show it, and filters accept it, as "all".
    data_limit: bool = False
    # Fields added after run ids were first published: left out of the hash while they hold
    # this neutral value (so older runs keep their ids), and the value older rows read as.
    hash_neutral: Any = ALWAYS_HASHED


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_at_least(minimum: int) -> Checker:
    def check(flag: str, value: Any) -> tuple[str | None, Any]:
        if not _is_int(value) or value < minimum:
            return f"{flag} must be an integer >= {minimum} (got {value!r})", value
        return None, int(value)

    return check


def _optional_int_at_least(minimum: int) -> Checker:
    inner = _int_at_least(minimum)

    def check(flag: str, value: Any) -> tuple[str | None, Any]:
        return (None, None) if value is None else inner(flag, value)

    return check


def _one_of(choices: Sequence[str]) -> Checker:
    def check(flag: str, value: Any) -> tuple[str | None, Any]:
        if value not in choices:
            return f"{flag} must be one of {', '.join(choices)} (got {value!r})", value
        return None, value

    return check


def _positive_number(flag: str, value: Any) -> tuple[str | None, Any]:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{flag} must be a number (got {value!r})", value
    if not math.isfinite(value) or value <= 0:
        return f"{flag} must be > 0 (got {value:g})", value
    return None, float(value)  # 1 and 1.0 must hash to the same run id


def _probability_below_one(flag: str, value: Any) -> tuple[str | None, Any]:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{flag} must be a number in [0, 1) (got {value!r})", value
    if not 0 <= value < 1:  # type: ignore[operator]  # typeshed's numbers.Real has only < and <=. Also false for NaN
        return f"{flag} must be >= 0 and < 1 (got {value:g})", value
    return None, float(value)  # 0 and 0.0 must hash to the same run id


def _device(flag: str, value: Any) -> tuple[str | None, Any]:
    if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
        return f"{flag} must be auto, cpu, cuda or cuda:N (got {value!r})", value
    return None, value


def _registered(flag: str, value: Any) -> tuple[str | None, Any]:
    # Strategy and backbone names live in the model registry; checked in __post_init__.
    return None, value


def _meta(default: Any, info: FieldInfo) -> Any:
    return field(default=default, metadata={"fusioncli": info})


@dataclass(frozen=True)
class RunConfig:
    """One training run: model, optimiser schedule, seed, device and precision.

    Defaults are the seed notebook's: late fusion on the seed backbone, Adam lr 1e-4 with
    cosine annealing over 15 epochs, batch 32, seed 51.
    """

    strategy: str = _meta(
        "late",
        FieldInfo(
            "--strategy", "Fusion strategy (`fusioncli strategies` lists them).", _registered, short="-s",
            grid_flag="--strategies", grid_help="Comma list of strategies (`fusioncli strategies` lists them).",
            grid_default="late,intermediate-concat,intermediate-add,intermediate-multiply", axis="strategies",
        ),
    )  # fmt: skip
    backbone: str = _meta("seed", FieldInfo("--backbone", "Backbone preset: seed or lab.", _registered))
    lr: float = _meta(
        1e-4,
        FieldInfo(
            "--lr", "Adam learning rate.", _positive_number, numeric=True,
            grid_flag="--lrs", grid_help="Comma list of Adam learning rates.", grid_default="1e-4,1e-5,1e-6",
            axis="lrs",
        ),
    )  # fmt: skip
    scheduler: str = _meta(
        "cosine",
        FieldInfo(
            "--scheduler", "cosine: CosineAnnealingLR(T_max=epochs), stepped per epoch; constant: no schedule.",
            _one_of(SCHEDULERS), choices=SCHEDULERS,
            grid_flag="--schedulers", grid_help="Comma list of schedulers: cosine, constant.",
            grid_default="cosine,constant", axis="schedulers",
        ),
    )  # fmt: skip
    epochs: int = _meta(15, FieldInfo("--epochs", "Training epochs per run.", _int_at_least(1), numeric=True))
    batch_size: int = _meta(
        32, FieldInfo("--batch-size", "Training batch size (last partial batch kept).", _int_at_least(1), numeric=True)
    )
    seed: int = _meta(
        51,
        FieldInfo(
            "--seed", "Seed for weights and batch order.", _int_at_least(0), numeric=True,
            grid_flag="--seeds",
            grid_help="Comma list of seeds (several give a 95% CI and paired tests in the report).",
            grid_default="51", axis="seeds",
        ),
    )  # fmt: skip
    device: str = _meta(
        "auto", FieldInfo("--device", "auto, cpu, cuda or cuda:N (all runs on this one device).", _device)
    )
    precision: str = _meta(
        "auto",
        FieldInfo(
            "--precision", "auto: bf16 autocast where the hardware has it, else fp32.", _one_of(PRECISIONS),
            choices=PRECISIONS,
        ),
    )  # fmt: skip
    limit_per_class: int | None = _meta(
        None,
        FieldInfo(
            "--limit-per-class", "Use at most N samples per class in each split (quick runs).",
            _optional_int_at_least(1), numeric=True, data_limit=True,
        ),
    )  # fmt: skip
    # At most this many *training* samples per class (the first ones); validation untouched, so
    # runs of different training-set sizes are scored on the same samples (learning curves).
    train_per_class: int | None = _meta(
        None,
        FieldInfo(
            "--train-per-class", "Train on at most N samples per class (the first ones); validation is not cut.",
            _optional_int_at_least(1), numeric=True, data_limit=True, hash_neutral=None,
            grid_flag="--train-per-class",
            grid_help="Comma list of training-set sizes: at most N training samples per class, or 'all'; "
            "validation is never cut, so sizes compare on the same samples (learning curves), e.g. 100,500,all.",
            grid_default="all", axis="train_sizes",
        ),
    )  # fmt: skip
    # Probability that a training sample has one modality (RGB or LiDAR, 50/50) replaced by
    # zeros; 0.0 (the default) trains exactly as before the option existed.
    modality_dropout: float = _meta(
        0.0,
        FieldInfo(
            "--modality-dropout",
            "Training only: probability (0 <= p < 1) that a sample has RGB or LiDAR (50/50) replaced by zeros.",
            _probability_below_one, numeric=True, hash_neutral=0.0,
        ),
    )  # fmt: skip

    # The LiDAR input step in front of the model (fusioncli.models.inputs); "seed" (the
    # default) feeds the seed's XYZA unchanged, exactly as before the option existed.
    lidar_norm: str = _meta(
        "seed",
        FieldInfo(
            "--lidar-norm",
            "LiDAR input the model sees: seed (x, y, z / 50, the seed notebook's) or nearest (x, y, z in "
            "metres relative to the sample's nearest surface; learns the depth shape much sooner).",
            _one_of(LIDAR_NORMS), choices=LIDAR_NORMS, hash_neutral="seed",
            grid_flag="--lidar-norms", grid_help="Comma list of LiDAR inputs: seed, nearest.",
            grid_default="seed", axis="lidar_norms",
        ),
    )  # fmt: skip

    # The camera input step in front of the model (fusioncli.models.inputs); "seed" (the
    # default) feeds pixel / 255 unchanged, exactly as before the option existed.
    rgb_norm: str = _meta(
        "seed",
        FieldInfo(
            "--rgb-norm",
            "Camera input the model sees: seed (pixel / 255, the seed notebook's) or standard (R, G, B of each "
            "image shifted and scaled to mean 0, std 1; learns dark, low-contrast images much sooner).",
            _one_of(RGB_NORMS), choices=RGB_NORMS, hash_neutral="seed",
            grid_flag="--rgb-norms", grid_help="Comma list of camera inputs: seed, standard.",
            grid_default="seed", axis="rgb_norms",
        ),
    )  # fmt: skip

    def __post_init__(self) -> None:
        problems: list[str] = []
        for f, info in config_fields():
            problem, value = info.check(info.flag, getattr(self, f.name))
            if problem:
                problems.append(problem)
            else:
                object.__setattr__(self, f.name, value)
        problems.extend(_registry_problems(self.strategy, self.backbone))
        if problems:
            raise BadInputError(problems)

    def resolve(self) -> RunConfig:
        """This config with ``auto`` device/precision replaced by what this machine does.

        Raises :class:`BadInputError` when the device or precision asked for is unavailable.
        """
        device = resolve_device(self.device)
        precision = resolve_precision(self.precision, device)
        return replace(self, device=device, precision=precision)

    @property
    def input_norms(self) -> dict[str, str]:
        """The model's input steps, as :func:`fusioncli.models.create_model`'s keyword arguments."""
        return {name: getattr(self, name) for name in INPUT_NORM_FIELDS}

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
        unknown = sorted(set(values) - set(CONFIG_FIELDS))
        if unknown:
            raise BadInputError(f"unknown run config key(s): {', '.join(unknown)}")
        return cls(**values)


def config_fields() -> list[tuple[Any, FieldInfo]]:
    """Every RunConfig field (``dataclasses.Field``) with its :class:`FieldInfo`, in order."""
    return [(f, f.metadata["fusioncli"]) for f in fields(RunConfig)]


def field_info(name: str) -> FieldInfo:
    """The :class:`FieldInfo` of RunConfig field ``name``."""
    return RunConfig.__dataclass_fields__[name].metadata["fusioncli"]


# Derived views of the metadata, for the modules that list fields (store, report, sweep).
CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f, _ in config_fields())
NUMERIC_CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f, info in config_fields() if info.numeric)
DATA_LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f, info in config_fields() if info.data_limit)
GRID_AXES: tuple[str, ...] = tuple(f.name for f, info in config_fields() if info.axis)
# Fields added later -> their neutral value (left out of the run id while they hold it).
HASH_NEUTRAL: dict[str, Any] = {
    f.name: info.hash_neutral for f, info in config_fields() if info.hash_neutral is not ALWAYS_HASHED
}
# What a field reads as in rows written before it existed (None needs no filling).
ROW_DEFAULTS: dict[str, Any] = {name: value for name, value in HASH_NEUTRAL.items() if value is not None}
DEFAULTS: dict[str, Any] = {f.name: f.default for f, _ in config_fields()}


def _registry_problems(strategy: str, backbone: str) -> list[str]:
    """Problems with the strategy/backbone names, checked against the model registry."""
    # Imported here: the registry is a sibling package that config (a leaf) must not depend on
    # at import time; the registry itself is torch-free until a model is built.
    from fusioncli.models import BACKBONES, strategy_names

    problems = []
    names = strategy_names()
    if strategy not in names:
        problems.append(f"--strategy must be one of {', '.join(names)} (got {strategy!r})")
    if backbone not in BACKBONES:
        problems.append(f"--backbone must be one of {', '.join(BACKBONES)} (got {backbone!r})")
    return problems


def plugin_of(strategy: Any) -> dict[str, str] | None:
    """``{"file", "sha256"}`` of the plugin that registered ``strategy`` (None: a built-in)."""
    from fusioncli.models.registry import plugin_source  # torch-free, like this module

    source = plugin_source(strategy) if isinstance(strategy, str) else None
    return None if source is None else source.to_json()


def run_id(config: RunConfig, dataset_fingerprint: str) -> str:
    """A stable 16-hex-digit id for (resolved config, dataset): same inputs, same id.

    The config is resolved first, so ``auto`` on a CPU machine and ``cpu`` name the same run.
    Fields added later are left out of the hash while they have their neutral default, so
    the runs of stores written before them keep their ids. A strategy from a plugin adds the
    sha256 of the plugin's source: editing the plugin makes new runs.
    """
    resolved = config if config.is_resolved else config.resolve()
    hashed = resolved.to_dict()
    for name, neutral in HASH_NEUTRAL.items():
        if hashed[name] == neutral:
            del hashed[name]
    identity: dict[str, Any] = {"config": hashed, "dataset": dataset_fingerprint}
    plugin = plugin_of(resolved.strategy)
    if plugin is not None:  # built-in strategies: the payload (and id) of every earlier version
        identity["plugin"] = plugin["sha256"]
    payload = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
