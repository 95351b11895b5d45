"""Weights & Biases: one W&B run per fusioncli run.

Each run is its own ``wandb.init(reinit="create_new")`` object, used only through that object
(never ``wandb.log``), so runs trained together never share a W&B run and a run whose finish
failed does not come back as "the previous run". W&B's console output (banners, run summaries,
sync hints) stays out of fusioncli's stderr unless ``--debug``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusioncli.errors import BadInputError
from fusioncli.tracking.base import (
    TAG_PREFIX,
    Artifact,
    ProblemHandler,
    RunInfo,
    check_reachable,
    check_writable_folder,
    final_metrics,
    import_extra,
)

OFFLINE_MODES = ("offline", "disabled", "dryrun")
TAG_CHARS = 64  # W&B's limit on a tag


def wandb_mode() -> str:
    """W&B's mode as its environment sets it (``online`` unless WANDB_MODE says otherwise)."""
    return (os.environ.get("WANDB_MODE") or "online").strip().lower()


class WandbTracker:
    """Logs each fusioncli run as one W&B run in ``project`` (files under ``directory``)."""

    name = "wandb"

    def __init__(
        self,
        project: str = "fusioncli",
        *,
        directory: Path | None = None,
        entity: str | None = None,
        timeout: float,
        on_problem: ProblemHandler | None = None,
        quiet: bool = True,
    ) -> None:
        self._wandb = import_extra("wandb", "wandb", "--wandb")
        self.project = project
        self.entity = entity
        self.directory = directory
        self.timeout = timeout
        self.on_problem = on_problem
        self.quiet = quiet
        mode = wandb_mode()
        self.destination = f"wandb {entity + '/' if entity else ''}{project} mode={mode}"

    def _hint(self) -> str:
        return "check WANDB_BASE_URL / your network, set WANDB_MODE=offline to log locally, or leave out --wandb"

    def probe(self, *, create: bool) -> None:
        """Check W&B can be reached (online) and its folder written, before training."""
        if self.directory is not None:
            check_writable_folder(self.directory, "the W&B folder", "set WANDB_DIR to a writable folder")
            if create:
                Path(self.directory).mkdir(parents=True, exist_ok=True)
        if wandb_mode() not in OFFLINE_MODES:
            base = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
            check_reachable(base, "the W&B server", self._hint())
            self._check_login()

    def _check_login(self) -> None:
        """An API key must be at hand (env, settings, .netrc, or asked for now on a terminal):
        otherwise every run's start would fail, or wait at a prompt, during the sweep."""
        import sys

        hint = "run `wandb login` or set WANDB_API_KEY (or WANDB_MODE=offline to log locally)"
        try:
            ok = self._wandb.login(verify=False, prompt=sys.stdin.isatty(), timeout=60)
        except Exception as exc:  # noqa: BLE001 - any failure here means runs cannot start
            from fusioncli.tracking.run import describe

            raise BadInputError(f"W&B login failed: {describe(exc)}", hint=hint) from None
        if ok is False:
            raise BadInputError("W&B has no API key for this machine", hint=hint)

    def open(self, info: RunInfo) -> _WandbRun:
        wandb = self._wandb
        settings = wandb.Settings(silent=True, console="off") if self.quiet else wandb.Settings()
        run_id = info.run_id
        tags = [t[:TAG_CHARS] for t in (str(info.config.get("strategy")), run_id) if t]
        run = wandb.init(
            project=self.project,
            entity=self.entity,
            dir=str(self.directory) if self.directory is not None else None,
            name=info.name,
            group=info.group,
            job_type="train",
            tags=tags,
            config={**info.config, **info.tags},
            reinit="create_new",
            settings=settings,
        )
        return _WandbRun(wandb, run, run_id)


class _WandbRun:
    def __init__(self, wandb: Any, run: Any, run_id: str) -> None:
        self._wandb = wandb
        self._run = run
        self._run_id = run_id
        self.id = str(run.id)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def finish(self, record: dict[str, Any], *, step: int, tags: dict[str, str], artifacts: Sequence[Artifact]) -> None:
        run = self._run
        status = str(record.get("status"))
        try:
            finals = final_metrics(record)
            if finals:
                run.log(finals, step=step)  # at the last epoch's step, next to its history
            run.summary.update({**finals, "status": status, **({"error": tags[f"{TAG_PREFIX}error"]}
                                                               if f"{TAG_PREFIX}error" in tags else {})})  # fmt: skip
            run.config.update(tags, allow_val_change=True)
            for artifact in artifacts:
                path = Path(artifact.path)
                if artifact.kind == "model":
                    meta = {"run_id": self._run_id}
                    model = self._wandb.Artifact(f"model-{self._run_id}", type="model", metadata=meta)
                    model.add_file(str(path), name=path.name)
                    run.log_artifact(model)
                else:  # a copy in the run's files folder (run.save would link to a file about to go)
                    shutil.copyfile(path, Path(run.dir) / path.name)
        finally:
            # Closed even when a figure or a file could not be sent (then that error is raised).
            run.finish(exit_code=0 if status == "finished" else 1)
