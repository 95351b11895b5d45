"""A sweep, validated once and planned once: :class:`SweepSpec` -> :class:`SweepPlan`.

The spec is what a user asked for (the grid's run configs and how to run them), checked as a
whole with every problem named by its flag. The plan is what the sweep will do, computed once
before anything trains: each grid point's run id (on the cache's dataset fingerprint), its
config as the backend will run it, its stored status and whether it trains or is skipped, which
executor runs it (one model at a time, or stacked groups) and where. ``sweep --dry-run`` prints
the plan; the executors (:mod:`fusioncli.sweep.runner` here, :mod:`fusioncli.sweep.ray_backend`
on a cluster) run it. Planning reads only the cache manifest and the store: torch-free unless a
device must be probed (``--device auto`` on a machine with a GPU driver).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusioncli.config import GRID_AXES, RunConfig, run_id
from fusioncli.errors import BadInputError
from fusioncli.machine import resolve_device, validate_device_spec

if TYPE_CHECKING:  # the CLI reads this module's choices for --help: no pandas/pyarrow at import
    from types import EllipsisType

    from fusioncli.record import RunRecord
    from fusioncli.results.store import ResultsStore

BACKENDS = ("local", "ray")
EXECUTORS = ("auto", "loop", "stacked")
# Runs trained together by the stacked executor: bounds the memory of one group (params, grads
# and Adam state of each member) while keeping the GPU busy; the seed's grid is groups of 6.
DEFAULT_MAX_GROUP = 16
LOCAL_ADDRESSES = (None, "local")  # Ray: start an instance on this machine
TRAIN, SKIP = "train", "skip"


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the run configs of the grid and how to run them.

    ``force`` retrains finished runs; ``robustness`` and ``keep_weights`` retrain finished runs
    stored without robustness figures / kept weights (they need the trained model).
    ``address``, ``gpus_per_run`` and ``cpus_per_run`` are Ray's (None: not given).
    """

    configs: tuple[RunConfig, ...]
    backend: str = "local"
    executor: str = "auto"
    max_group: int = DEFAULT_MAX_GROUP
    compile: bool = False
    force: bool = False
    robustness: bool = False
    keep_weights: bool = False
    address: str | None = None
    gpus_per_run: float | None = None
    cpus_per_run: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "configs", tuple(self.configs))
        problems: list[str] = []
        if not self.configs:
            problems.append("the sweep grid is empty")
        if self.backend not in BACKENDS:
            problems.append(f"--backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})")
        if self.executor not in EXECUTORS:
            problems.append(f"--executor must be one of {', '.join(EXECUTORS)} (got {self.executor!r})")
        if isinstance(self.max_group, bool) or not isinstance(self.max_group, int) or self.max_group < 1:
            problems.append(f"--max-group must be an integer >= 1 (got {self.max_group!r})")
        if self.compile and self.executor == "loop":
            problems.append("--compile applies to stacked groups; --executor loop trains without it")
        ray_only = {"--address": self.address, "--gpus-per-run": self.gpus_per_run, "--cpus-per-run": self.cpus_per_run}
        if self.backend == "local":
            given = [flag for flag, value in ray_only.items() if value is not None]
            if given:
                raise BadInputError(f"{', '.join(given)}: only with --backend ray", hint="add --backend ray")
        else:
            problems.extend(_resource_problems(self.gpu_share, self.cpu_share))
        if problems:
            raise BadInputError(problems)

    @property
    def gpu_share(self) -> float:
        """Ray: the GPU share each run (or stacked group) reserves (default 0)."""
        return 0.0 if self.gpus_per_run is None else self.gpus_per_run

    @property
    def cpu_share(self) -> float:
        """Ray: the CPU cores each run (or stacked group) reserves (default 1)."""
        return 1.0 if self.cpus_per_run is None else self.cpus_per_run

    @classmethod
    def from_options(
        cls,
        axes: Mapping[str, str],
        common: Mapping[str, Any],
        *,
        cache_dir: Path,
        equal_steps: bool = False,
        **options: Any,
    ) -> SweepSpec:
        """A spec from CLI text: ``axes`` maps each grid-axis field to its comma list
        (``{"lr": "1e-4,1e-5", ...}``), ``common`` the other RunConfig fields. ``equal_steps``
        gives every training-set size about the largest one's optimiser steps (epochs from the
        cache's training counts). ``options`` are the other :class:`SweepSpec` fields."""
        from fusioncli.sweep.grid import equal_step_epochs, expand_grid, parse_axes

        unknown = sorted(set(axes) - set(GRID_AXES))
        if unknown:
            raise BadInputError(f"not grid axes: {', '.join(unknown)}")
        parsed: dict[str, Any] = parse_axes(axes)
        epochs, batch_size = common.get("epochs", 15), common.get("batch_size", 32)
        if equal_steps and isinstance(epochs, int) and isinstance(batch_size, int) and epochs >= 1 and batch_size >= 1:
            sizes = parsed.get("train_sizes", [None])
            counts = training_counts(cache_dir)
            parsed["epochs_by_size"] = equal_step_epochs(
                epochs, batch_size, counts, sizes, common.get("limit_per_class")
            )
        return cls(configs=tuple(expand_grid(**parsed, **common)), **options)


def _resource_problems(gpus_per_run: Any, cpus_per_run: Any) -> list[str]:
    problems = []
    if not isinstance(gpus_per_run, (int, float)) or not math.isfinite(gpus_per_run) or not 0 <= gpus_per_run <= 1:
        problems.append(
            f"--gpus-per-run must be between 0 and 1 (got {gpus_per_run!r}): a run trains on one GPU; "
            "0.25 puts four runs on each GPU"
        )
    if not isinstance(cpus_per_run, (int, float)) or not math.isfinite(cpus_per_run) or cpus_per_run <= 0:
        problems.append(f"--cpus-per-run must be > 0 (got {cpus_per_run!r})")
    return problems


def cache_manifest(cache_dir: Path) -> dict[str, Any]:
    """The manifest of the prepared cache at ``cache_dir`` (checked; torch-free)."""
    from fusioncli.data.cache import MANIFEST, PREPARE_HINT, read_manifest

    manifest = read_manifest(Path(cache_dir))
    if manifest is None:
        if not (Path(cache_dir) / MANIFEST).is_file():
            raise BadInputError(f"no prepared cache in {cache_dir} (no {MANIFEST})", hint=PREPARE_HINT)
        raise BadInputError(
            f"{Path(cache_dir) / MANIFEST} is unreadable or from another cache format", hint=f"{PREPARE_HINT} --force"
        )
    return manifest


def cache_shape(cache_dir: Path | None) -> tuple[int, tuple[int, int]]:
    """(classes, (H, W) image size) of the prepared cache at ``cache_dir``, from its manifest alone;
    without a cache, the seed's 2 classes and 64 x 64.

    The size is the manifest's ``image_size``, which :func:`fusioncli.data.cache.load_cache`
    holds the shards to; a cache without one (the DLI layout's) is 64x64. What ``strategies``
    and ``profile`` size the models for with ``--cache-dir``.
    """
    from fusioncli.data.cache import MANIFEST, PREPARE_HINT
    from fusioncli.models.backbones import DEFAULT_INPUT_SIZE, as_input_size

    if cache_dir is None:
        return 2, DEFAULT_INPUT_SIZE
    manifest = cache_manifest(cache_dir)  # no or a bad manifest: says to run `fusioncli prepare`
    try:
        size = as_input_size(manifest.get("image_size", DEFAULT_INPUT_SIZE))
    except BadInputError as exc:
        raise BadInputError(
            f"{Path(cache_dir) / MANIFEST}: image_size {exc}", hint=f"rebuild the cache: {PREPARE_HINT} --force"
        ) from None
    return len(manifest["class_names"]), size


def training_counts(cache_dir: Path) -> list[int]:
    """Training samples per class of the cache, in class order (``--equal-steps``)."""
    manifest = cache_manifest(cache_dir)
    return [manifest["counts"][name]["train"] for name in manifest["class_names"]]


@dataclass(frozen=True)
class PlannedRun:
    """One grid point of a plan: run id, config as it will run, stored status, and action."""

    index: int
    run_id: str
    config: RunConfig
    stored_status: str | None
    action: str  # TRAIN or SKIP

    @property
    def trains(self) -> bool:
        return self.action == TRAIN


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will do: computed once by :func:`plan_sweep`, run by an executor."""

    spec: SweepSpec
    cache_dir: Path  # absolute (Path() when planned on data in hand)
    fingerprint: str
    runs: tuple[PlannedRun, ...]
    device: str  # where the runs train (every run of a sweep on one device kind)
    executor: str  # "loop" or "stacked"
    placement: str  # the same in words, for the sweep's first line

    @property
    def to_train(self) -> list[PlannedRun]:
        return [run for run in self.runs if run.trains]

    @property
    def total(self) -> int:
        return len(self.runs)


def needs_training(
    store: ResultsStore,
    rid: str,
    *,
    force: bool,
    robustness: bool,
    keep_weights: bool,
    stored: RunRecord | EllipsisType | None = ...,
) -> bool:
    """The sweep's one rule for a grid point: train it unless a finished record is stored.

    ``force`` retrains anything. A sweep that asks for robustness retrains a finished run stored
    without it (the evaluation needs the trained model, and only the best run's weights are
    kept; training is deterministic, so the re-run reproduces the run and adds its robustness).
    Likewise ``keep_weights`` retrains a finished run whose weights were not kept. ``stored``:
    the run's record when the caller has just read it (not read again).
    """
    if force:
        return True
    record = store.get(rid) if stored is ... else stored
    if record is None or not record.is_finished:
        return True
    if robustness and not record.robustness:
        return True
    return bool(keep_weights and not store.has_weights(rid))


def resolve_for_backend(spec: SweepSpec) -> list[RunConfig]:
    """The grid's configs as the backend will run them (``auto`` replaced), all on one device."""
    if spec.backend == "ray":
        resolved = [resolve_for_ray(c, spec.gpu_share) for c in spec.configs]
    else:
        resolved = [c.resolve() for c in spec.configs]
    devices = {c.device for c in resolved}
    if len(devices) > 1:
        raise BadInputError(f"a sweep runs on one device; the grid asks for {', '.join(sorted(devices))}")
    return resolved


def plan_sweep(spec: SweepSpec, cache_dir: Path, store: ResultsStore) -> SweepPlan:
    """Plan ``spec`` on the prepared cache at ``cache_dir`` against ``store`` (nothing trains).

    Reads the cache's manifest (its dataset fingerprint) and the store; no data is loaded.
    """
    # Absolute, for workers that do not share this process's working folder; symlinks kept, as
    # a link such as /shared may point to a different mount on each node.
    cache = Path(cache_dir).absolute()
    return plan_grid(spec, cache_manifest(cache)["fingerprint"], store, cache_dir=cache)


def plan_grid(spec: SweepSpec, fingerprint: str, store: ResultsStore, *, cache_dir: Path | None = None) -> SweepPlan:
    """Plan ``spec`` on the dataset ``fingerprint``: one :class:`PlannedRun` per distinct run id
    (a config repeated in the grid is the same run: kept once, in its first place)."""
    resolved = resolve_for_backend(spec)
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    for cfg in resolved:
        rid = run_id(cfg, fingerprint)
        if rid in seen:
            continue
        seen.add(rid)
        stored = store.get(rid)
        train = needs_training(
            store, rid, force=spec.force, robustness=spec.robustness, keep_weights=spec.keep_weights, stored=stored
        )
        status = stored.status if stored else None
        runs.append(PlannedRun(len(runs) + 1, rid, cfg, status, TRAIN if train else SKIP))
    device = resolved[0].device
    executor = choose_executor(device, spec.executor)
    return SweepPlan(
        spec=spec,
        cache_dir=Path(cache_dir) if cache_dir is not None else Path(),
        fingerprint=fingerprint,
        runs=tuple(runs),
        device=device,
        executor=executor,
        placement=_placement(spec, device, executor),
    )


def choose_executor(device: str, requested: str = "auto") -> str:
    """``"loop"`` (one model at a time) or ``"stacked"`` (vmapped groups) for ``device``.

    ``auto`` stacks on CUDA, where one small model leaves the GPU launch-bound, and loops on the
    CPU, where ``vmap``'s grouped convolutions are no faster than separate ones (measured:
    benchmarks/bench_stacked.py). ``loop`` and ``stacked`` are honoured on any device.
    """
    if requested not in EXECUTORS:
        raise BadInputError(f"--executor must be one of {', '.join(EXECUTORS)} (got {requested!r})")
    if requested != "auto":
        return requested
    validate_device_spec(device)
    resolved = resolve_device(device) if device == "auto" else device
    return "stacked" if resolved.startswith("cuda") else "loop"


def _placement(spec: SweepSpec, device: str, executor: str) -> str:
    """Where the runs train, in words: ``cpu, loop executor`` or ``cuda:0 on the Ray cluster at
    auto, stacked groups of <= 16, 1 CPU + 0.25 GPU per group``."""
    if spec.backend == "local":
        if executor == "loop":
            unused = " (--compile unused: runs train one at a time)" if spec.compile else ""
            return f"{device}, loop executor{unused}"
        compiled = ", compiled" if spec.compile else ""
        return f"{device}, stacked groups of <= {spec.max_group}{compiled}"
    cluster = "a Ray instance started here" if spec.address in LOCAL_ADDRESSES else f"the Ray cluster at {spec.address}"
    share = f"{spec.cpu_share:g} CPU"
    if spec.gpu_share > 0:
        share += f" + {spec.gpu_share:g} GPU"
    if executor == "stacked":
        return f"{device} on {cluster}, stacked groups of <= {spec.max_group}, {share} per group"
    return f"{device} on {cluster}, {share} per run"


def resolve_for_ray(config: RunConfig, gpus_per_run: float = 0.0) -> RunConfig:
    """``config`` as a Ray task reserving ``gpus_per_run`` GPUs will run it.

    Device: ``cuda:0`` when ``gpus_per_run > 0``, else ``cpu``; ``auto`` follows, while
    ``cpu`` with a GPU share, ``cuda`` without one, or ``cuda:N`` (N > 0) is a
    :class:`BadInputError` (a task sees the GPU it reserved as ``cuda:0``). Precision ``auto``:
    the driver's local answer for that device, or ``bf16`` for GPU runs from a driver without
    CUDA; explicit precisions are kept.
    """
    from fusioncli.machine import cuda_available, resolve_precision

    gpu = gpus_per_run > 0
    device = config.device
    if gpu and device == "cpu":
        raise BadInputError(
            f"--device cpu with --gpus-per-run {gpus_per_run:g}: CPU runs need no GPU",
            hint="leave out --gpus-per-run, or use --device auto",
        )
    if not gpu and device.startswith("cuda"):
        raise BadInputError(
            f"--device {device} on Ray needs --gpus-per-run > 0: a task sees a GPU only when it reserves one",
            hint="add e.g. --gpus-per-run 1 (or 0.25 to share each GPU between four runs)",
        )
    if device not in ("auto", "cpu", "cuda", "cuda:0"):
        raise BadInputError(
            f"--device {device}: on Ray each run sees the GPU it reserved as cuda:0",
            hint="use --device auto (or cuda); Ray picks the GPU",
        )
    target = "cuda:0" if gpu else "cpu"
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if gpu and not cuda_available() else resolve_precision("auto", target)
    return replace(config, device=target, precision=precision)


def group_runs(runs: Sequence[PlannedRun], max_group: int) -> list[list[PlannedRun]]:
    """The runs to train as stacked groups, by :func:`fusioncli.train.stacked.group_configs`' rule."""
    from fusioncli.train.stacked import group_configs

    position = {id(run.config): run for run in runs}  # group_configs returns the configs it was given
    return [[position[id(cfg)] for cfg in group] for group in group_configs([r.config for r in runs], max_group)]
