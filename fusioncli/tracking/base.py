"""What every tracker shares: the protocol, time-limited calls, run names, groups, tags and the
numbers a run sends.

A tracker (:class:`Tracker`) opens one tracker run per fusioncli run (:meth:`Tracker.open`) and
returns a handle (:class:`TrackerRun`) that only ever talks about that run: nothing is shared
between runs, so runs trained together (stacked, Ray) each get their own tracker run, and a
handle that failed cannot touch the next run. Torch-free; the tracker libraries are imported by
the tracker modules only, when a tracker is asked for.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

from fusioncli.errors import BadInputError

DEFAULT_TIMEOUT_S = 60.0  # per tracker call; a W&B run start online can take ~10 s
PROBE_TIMEOUT_S = 5.0  # the connectivity check before training
EXIT_TRACKER_MISSED = 3  # every run stored, but a tracker missed some of it
TAG_PREFIX = "fusioncli."

T = TypeVar("T")
ProblemHandler = Callable[[str], None]


class TrackerTimeout(Exception):
    """A tracker call ran past its time limit (it goes on in a background thread)."""


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is told when it opens a run."""

    run_id: str
    config: dict[str, Any]
    name: str  # ``late lr=1e-3 cosine seed=1``
    group: str  # the configuration without the seed: seeds of one configuration share it
    tags: dict[str, str] = field(default_factory=dict)  # fusioncli.run_id, fusioncli.dataset, ...


@dataclass(frozen=True)
class Artifact:
    """A file to attach to a tracker run: ``kind`` is ``record`` or ``model``."""

    path: Path
    kind: str


class TrackerRun(Protocol):
    """One open tracker run; every call is about this run only."""

    id: str  # the tracker's own id for the run (MLflow run id, W&B run id)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(
        self, record: dict[str, Any], *, step: int, tags: dict[str, str], artifacts: Sequence[Artifact]
    ) -> None: ...


class Tracker(Protocol):
    """A destination for tracker runs (an MLflow experiment, a W&B project)."""

    name: str  # "mlflow" | "wandb"
    destination: str  # where its runs go, in words: what the ledger keys on
    timeout: float  # seconds each call may take
    on_problem: ProblemHandler | None  # told of each problem as it happens

    def probe(self, *, create: bool) -> None: ...

    def open(self, info: RunInfo) -> TrackerRun: ...


def call_with_timeout(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()`` in a worker thread, waiting at most ``timeout`` seconds.

    Python cannot stop a thread: a call past its limit raises :class:`TrackerTimeout` here and
    goes on in its daemon thread, which never keeps the process from exiting; what it does if
    it ever returns is not waited for (it may still land in the tracker).
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=f"fusioncli-tracker: {what}", daemon=True).start()
    if not done.wait(timeout):
        raise TrackerTimeout(f"no answer within {timeout:g} s (the call goes on in a background thread)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- names and groups ------------------------------------------------------------------------
def format_lr(value: float) -> str:
    from fusioncli.results.render import format_lr as _format_lr

    return _format_lr(value)


def run_name(config: Mapping[str, Any]) -> str:
    """``late lr=1e-3 cosine seed=1`` (``train=100/class`` when cut): as the sweep prints runs."""
    size = config.get("train_per_class")
    cut = "" if size is None else f" train={size}/class"
    lr = format_lr(float(config.get("lr", 0.0)))
    return f"{config.get('strategy')} lr={lr} {config.get('scheduler')}{cut} seed={config.get('seed')}"


def configuration_id(config: Mapping[str, Any], fingerprint: str | None) -> str:
    """A short hash of the config without its seed, plus the data: one per configuration."""
    rest = {k: v for k, v in config.items() if k != "seed"}
    payload = json.dumps({"config": rest, "dataset": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:8]


def group_name(config: Mapping[str, Any], fingerprint: str | None) -> str:
    """``late lr=1e-3 cosine [1a2b3c4d]``: the seeds of one configuration share it."""
    name = run_name(config).rsplit(" seed=", 1)[0]
    return f"{name} [{configuration_id(config, fingerprint)}]"


def run_info(run_id: str, config: dict[str, Any], fingerprint: str | None, *, replaces: str | None = None) -> RunInfo:
    """The name, group and opening tags of one fusioncli run."""
    tags = {
        f"{TAG_PREFIX}run_id": run_id,
        f"{TAG_PREFIX}configuration": configuration_id(config, fingerprint),
        f"{TAG_PREFIX}group": group_name(config, fingerprint),
        f"{TAG_PREFIX}strategy": str(config.get("strategy")),
        f"{TAG_PREFIX}device": str(config.get("device")),
    }
    if fingerprint:
        tags[f"{TAG_PREFIX}dataset_fingerprint"] = fingerprint
    if replaces:
        tags[f"{TAG_PREFIX}replaces"] = replaces
    return RunInfo(run_id, dict(config), run_name(config), group_name(config, fingerprint), tags)


# -- numbers ---------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def flat_numbers(values: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers in nested dicts, keyed ``a/b/c`` (lists and strings are left out)."""
    out: dict[str, float] = {}
    if not isinstance(values, Mapping):
        return out
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, f"{name}/"))
        else:
            number = _number(value)
            if number is not None:
                out[name] = number
    return out


def epoch_metrics(row: Mapping[str, Any]) -> tuple[int | None, dict[str, float]]:
    """(step, metrics) of one history row: the step is its epoch."""
    step = row.get("epoch")
    metrics = {k: v for k, v in flat_numbers(row).items() if k != "epoch"}
    return (int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None), metrics


def final_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A finished record's figures, flat: validation (with per-class and whatever else the record's
    metrics hold, e.g. calibration), timing, memory, parameters, robustness."""
    out: dict[str, float] = {}
    out.update(flat_numbers(record.get("metrics"), "final/"))
    out.update(flat_numbers(record.get("timing"), "timing/"))
    out.update(flat_numbers(record.get("memory"), "memory/"))
    out.update(flat_numbers(record.get("params"), "params/"))
    out.update(flat_numbers(record.get("robustness"), "robustness/"))
    out.update(flat_numbers(record.get("calibration"), "calibration/"))
    flops = _number(record.get("flops_per_sample"))
    if flops is not None:
        out["flops_per_sample"] = flops
    return out


def last_step(record: Mapping[str, Any]) -> int:
    """The step the final figures go to: the last epoch trained (0 when none was)."""
    steps = [row.get("epoch") for row in record.get("history") or () if isinstance(row, Mapping)]
    numbers = [int(s) for s in steps if isinstance(s, (int, float)) and not isinstance(s, bool)]
    return max(numbers, default=0)


def closing_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """Tags known once the run is over: its status, error, versions, device, git commit."""
    env = record.get("env") or {}
    tags = {f"{TAG_PREFIX}status": str(record.get("status"))}
    if record.get("error"):
        tags[f"{TAG_PREFIX}error"] = str(record["error"])[:1000]
    for key, tag in (
        ("fusioncli_version", "fusioncli_version"),
        ("torch_version", "torch_version"),
        ("cuda_version", "cuda_version"),
        ("device_name", "device_name"),
        ("git_commit", "git_commit"),
        ("git_dirty", "git_dirty"),
    ):
        if isinstance(env, Mapping) and env.get(key) is not None:
            tags[f"{TAG_PREFIX}{tag}"] = str(env[key])
    dataset = record.get("dataset") or {}
    if isinstance(dataset, Mapping) and dataset.get("fingerprint"):
        tags[f"{TAG_PREFIX}dataset_fingerprint"] = str(dataset["fingerprint"])
    return tags


def import_extra(module: str, extra: str, flag: str) -> Any:
    """Import a tracker's library; a missing one is a BadInputError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BadInputError(
            f"{flag} needs the {module!r} package, which is not installed",
            hint=f"install the {extra} extra: pip install 'fusioncli[{extra}]'",
        ) from None


def check_reachable(url: str, what: str, hint: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise BadInputError when nothing answers at ``url``'s host and port within ``timeout``."""
    import socket  # here: a `--help` never needs it

    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        raise BadInputError(f"{what} {url!r} has no host", hint=hint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise BadInputError(
            f"{what} {url} is unreachable ({exc.strerror or type(exc).__name__}; time limit {timeout:g} s)", hint=hint
        ) from None


def check_writable_folder(folder: Path, what: str, hint: str) -> None:
    """Raise BadInputError unless ``folder`` (or its nearest existing parent) is a writable folder."""
    probe = Path(folder).resolve()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInputError(f"{what}: {folder} is not a writable folder", hint=hint)
