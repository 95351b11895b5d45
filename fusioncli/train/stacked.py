"""Batched grid execution: runs of one architecture trained together as one stacked model.

A batch of 32 small images leaves a GPU idle: each step is a few hundred tiny kernel launches.
Runs that share an architecture and the shape of their work (strategy, backbone, epochs, batch
size, device, precision, data limit) can instead train *together*: their parameters are stacked
along a new leading dimension (``torch.func.stack_module_state``) and one ``vmap`` over
``functional_call`` runs every member's forward and backward at once -- ``vmap`` turns the
convolutions into grouped convolutions and the linear layers into batched matmuls. What may
differ inside a group: the learning rate, the scheduler and the seed.

Each member trains exactly as :func:`fusioncli.train.loop.train_run` would train it alone:

* initialisation: ``torch.manual_seed(cfg.seed)`` then ``create_model``, per member;
* batch order: each member's own permutation generator (seeded with its seed); members with
  different seeds get different (K, B) gathers, members sharing one seed share one gather;
* loss: the sum over members of each member's mean cross-entropy, so each member's gradient is
  the gradient it would have alone (the members share no parameters);
* optimiser: :class:`StackedAdam`, ``torch.optim.Adam``'s maths on the stacked tensors with a
  per-member learning rate; schedules are computed by torch's own scheduler classes
  (:func:`lr_schedule`), so the learning rates are bit-identical to ``train_run``'s;
* validation after every epoch, per member; one host-device sync per epoch for the group.

Results equal separate training up to floating-point summation order (the tests check this
in float64). At the end every member becomes a real ``nn.Module`` and its record is built by
:func:`fusioncli.train.loop.finished_record`, so records look the same whichever executor ran.

On CUDA the fixed-shape training step (gather, forward, backward, Adam) is captured once per
group as a CUDA graph and replayed (the epoch's last, smaller batch runs eagerly), bf16
autocast and channels_last data apply as in ``train_run``, and cuDNN autotunes under bf16.
``compile=True`` additionally runs the stacked forward through ``torch.compile``, compiled once
per architecture and reused by every later group of it (never by default). On the CPU ``vmap``
is not faster than one model at a time, so the sweep plan
(:func:`fusioncli.sweep.plan.choose_executor`) picks the plain loop there unless asked otherwise.

Models must not update buffers in their forward (no BatchNorm) and must not draw random numbers
(no dropout); ``vmap`` refuses random operations, so a model that does fails loudly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fusioncli.config import RunConfig, run_id
from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.train import engine  # module access: tests patch engine.batch_inputs
from fusioncli.train.loop import RunResult, finished_record, run_work, train_run
from fusioncli.train.probes import clock, peak_memory, utc_now

# torch.optim.Adam's defaults (train_run uses them).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# Eager steps before a CUDA graph is captured: lazy initialisation and cuDNN autotuning must
# happen outside the capture (torch.cuda.graph's documentation asks for a few).
CUDA_GRAPH_WARMUP_STEPS = 3

StackedEpochCallback = Callable[[RunConfig, dict[str, Any]], None]
Params = dict[str, torch.Tensor]

# torch.compile'd stacked forwards, one per architecture (strategy, backbone, LiDAR input,
# classes, input size), with the meta model each closes over (see _stacked_forward).
_COMPILED: dict[tuple[Any, ...], tuple[Callable[..., torch.Tensor], nn.Module]] = {}


# --------------------------------------------------------------------------- grouping


def is_stackable(cfg: RunConfig) -> bool:
    """Whether ``cfg`` may share a stacked group (modality dropout draws per-run masks: no)."""
    # getattr: configs written before the field existed have no modality dropout.
    return float(getattr(cfg, "modality_dropout", 0.0) or 0.0) == 0.0


def stack_key(cfg: RunConfig) -> tuple[Any, ...]:
    """The key of the group ``cfg`` can train in: configs with equal keys can train together.

    Members of a group share strategy, backbone, LiDAR input, epochs, batch size, device, precision and data
    limits (``auto`` device/precision are resolved first); lr, scheduler and seed may differ. The
    data's image size and class count are not in the key: a group trains on one dataset, so its
    members share them (a compiled forward, kept across groups, is keyed by them too). A
    config that cannot be stacked (:func:`is_stackable`) gets a key made of its whole config,
    so it never shares a key with a different config.
    """
    c = cfg if cfg.is_resolved else cfg.resolve()
    if not is_stackable(c):
        return ("alone", *sorted(c.to_dict().items()))
    return (
        "stack", c.strategy, c.backbone, c.lidar_norm, c.rgb_norm, c.epochs, c.batch_size, c.device, c.precision,
        c.limit_per_class, c.train_per_class,
    )  # fmt: skip


def check_max_group(max_group: int | None) -> None:
    """Raise :class:`BadInputError` unless ``max_group`` is None or an integer >= 1."""
    if max_group is not None and (isinstance(max_group, bool) or not isinstance(max_group, int) or max_group < 1):
        raise BadInputError(f"--max-group must be an integer >= 1 (got {max_group!r})")


def group_configs(configs: Sequence[RunConfig], max_group: int | None = None) -> list[list[RunConfig]]:
    """Split ``configs`` into groups that :func:`train_stacked` can train together.

    Groups come in the order of their first config, members in input order; a group larger than
    ``max_group`` is cut into consecutive chunks of at most ``max_group``. Configs that cannot
    be stacked form groups of one. The configs are returned as given (not resolved).
    """
    check_max_group(max_group)
    buckets: dict[Any, list[RunConfig]] = {}
    for cfg in configs:
        key = stack_key(cfg) if is_stackable(cfg) else object()  # a fresh object: a group of its own
        buckets.setdefault(key, []).append(cfg)
    groups: list[list[RunConfig]] = []
    for members in buckets.values():
        size = max_group or len(members)
        groups.extend(members[i : i + size] for i in range(0, len(members), size))
    return groups


# --------------------------------------------------------------------------- optimiser


def lr_schedule(cfg: RunConfig) -> list[float]:
    """The learning rate of each epoch of ``cfg``, exactly as ``train_run``'s optimiser has it.

    Computed by torch's own ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch (its
    recursive formula rounds differently from the closed form), or ``lr`` throughout.
    """
    if cfg.scheduler != "cosine":
        return [cfg.lr] * cfg.epochs
    holder = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([holder], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient, so nothing moves; keeps the scheduler's order check quiet
        scheduler.step()
    return lrs


class StackedAdam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) on stacked (K, ...) parameters.

    Every member has its own learning rate (``lr``, a (K,) float64 tensor on the device, set
    with :meth:`set_lr`); the step count and bias corrections are device tensors too, so a step
    reads nothing from the host and can be captured in a CUDA graph.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: Sequence[float],
        betas: tuple[float, float] = ADAM_BETAS,
        eps: float = ADAM_EPS,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("StackedAdam needs at least one parameter")
        device = self.params[0].device
        self.k = self.params[0].shape[0]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.lr = torch.tensor(list(lr), dtype=torch.float64, device=device)
        if self.lr.shape != (self.k,):
            raise ValueError(f"StackedAdam: {self.lr.numel()} learning rates for {self.k} members")
        self.step_count = torch.zeros((), dtype=torch.float64, device=device)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def set_lr(self, lr: Sequence[float]) -> None:
        """Set every member's learning rate (in place: a captured graph keeps reading ``self.lr``)."""
        self.lr.copy_(torch.tensor(list(lr), dtype=torch.float64))

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One Adam update of every parameter from ``grads`` (same order and shapes as the params)."""
        self.step_count += 1
        bias_correction1 = 1 - self.beta1**self.step_count
        bias_correction2_sqrt = (1 - self.beta2**self.step_count).sqrt()
        step_size = self.lr / bias_correction1  # (K,) float64
        for param, grad, exp_avg, exp_avg_sq in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, strict=True):
            # The order of operations of torch.optim.Adam's single-tensor path.
            exp_avg.lerp_(grad, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.to(param.dtype)).add_(self.eps)
            scale = step_size.to(param.dtype).view(self.k, *([1] * (param.dim() - 1)))
            param.sub_(scale * exp_avg / denom)


# --------------------------------------------------------------------------- the stacked model


def _stacked_forward(
    base: nn.Module, per_member_inputs: bool, compile_key: tuple[Any, ...] | None
) -> tuple[Callable[..., torch.Tensor], nn.Module]:
    """``(f, base)``: ``f(params, buffers, rgb, xyza) -> logits (K, B, classes)`` for stacked
    parameters, and the parameter-free ``meta`` model it closes over.

    Inputs are (K, B, ...) when ``per_member_inputs`` (each member its own batch), else (B, ...)
    shared by every member. With ``compile_key`` the function is ``torch.compile``'d once per
    key and reused by later groups of the same architecture, together with the ``base`` it was
    compiled for (parameters come in as arguments, so any group of that architecture can call
    it); the caller must then use the returned ``base``.
    """
    if compile_key is not None and compile_key in _COMPILED:
        return _COMPILED[compile_key]

    def member_logits(params: Params, buffers: Params, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (params, buffers), (rgb, xyza))

    in_dims = (0, 0, 0, 0) if per_member_inputs else (0, 0, None, None)
    fn = vmap(member_logits, in_dims=in_dims)
    if compile_key is not None:
        # Static shapes: a group's full batches and its last partial batch compile one graph each.
        fn = torch.compile(fn, dynamic=False)
        _COMPILED[compile_key] = (fn, base)
    return fn, base


class _StackedGroup:
    """The stacked parameters of a group, its optimiser, and one training step / evaluation."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        cfgs: Sequence[RunConfig],
        work: PreparedData,
        *,
        per_member_inputs: bool,
        compile_forward: bool,
        cuda_graphs: bool,
    ) -> None:
        first = cfgs[0]
        self.device = torch.device(first.device)
        self.precision = first.precision
        self.batch_size = first.batch_size
        self.k = len(members)
        self.work = work
        self.per_member_inputs = per_member_inputs
        params, buffers = stack_module_state(list(members))
        # Leaves on the device, updated in place for the whole run (a captured graph holds them).
        self.params: Params = {n: p.detach().to(self.device).requires_grad_(True) for n, p in params.items()}
        self.buffers: Params = {n: b.detach().to(self.device) for n, b in buffers.items()}
        self.param_list = list(self.params.values())
        self.adam = StackedAdam(self.param_list, [c.lr for c in cfgs])
        self.loss_sums = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        # The architecture without storage: functional_call supplies the stacked slices.
        key = None
        if compile_forward:
            # The architecture: strategy and backbone sized for the data's classes and image size.
            norms = tuple(first.input_norms.values())
            arch = (first.strategy, first.backbone, *norms, work.num_classes, engine.input_size(work))
            key = (*arch, str(self.device), self.precision, per_member_inputs)
        self.train_forward, self.base = _stacked_forward(members[0].to("meta"), per_member_inputs, key)
        self.eval_forward, _ = _stacked_forward(self.base, False, None)
        self.compile_note = "compiled (torch.compile, once per architecture)" if compile_forward else "off"
        self._compile_pending = compile_forward
        self.cuda_graphs = cuda_graphs
        self.cuda_graph_note = (
            f"not captured (fewer than {CUDA_GRAPH_WARMUP_STEPS + 1} full batches)" if cuda_graphs else "off"
        )
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_idx: torch.Tensor | None = None
        self._warmup_steps = 0

    # -- training

    def _gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs and flattened targets for ``idx``: (K, B) per member, or (B,) shared."""
        if self.per_member_inputs:
            k, b = idx.shape
            # One gather of K*B samples; unflatten keeps the stored channels_last layout per sample.
            rgb, xyza = engine.batch_inputs(self.work, idx.reshape(-1))
            return rgb.unflatten(0, (k, b)), xyza.unflatten(0, (k, b)), self.work.labels[idx].reshape(-1)
        rgb, xyza = engine.batch_inputs(self.work, idx)
        return rgb, xyza, self.work.labels[idx].repeat(self.k)

    def _eager_step(self, idx: torch.Tensor) -> None:
        """One optimiser step of every member on its batch ``idx`` (see :meth:`_gather`)."""
        rgb, xyza, target = self._gather(idx)
        b = idx.shape[-1]
        # Without the weight-cast cache: the step may be captured in a CUDA graph.
        with engine.autocast(self.device, self.precision, cache=False):
            logits = self.train_forward(self.params, self.buffers, rgb, xyza)
        # Loss in fp32 even under bf16 autocast, as in train_run; the mean per member, summed
        # over members: d(sum)/d(member loss) = 1, so each member gets its own gradient.
        losses = F.cross_entropy(logits.float().flatten(0, 1), target, reduction="none").view(self.k, b).mean(dim=1)
        grads = torch.autograd.grad(losses.sum(), self.param_list)
        self.adam.step(grads)
        with torch.no_grad():
            self.loss_sums += losses.detach() * b

    def step(self, idx: torch.Tensor) -> None:
        """One training step, replayed from a CUDA graph when possible (full batches on CUDA)."""
        if self._compile_pending:
            self._first_compiled_step(idx)
        elif self.cuda_graphs and idx.shape[-1] == self.batch_size:
            self._graph_step(idx)
        else:
            self._eager_step(idx)

    def _first_compiled_step(self, idx: torch.Tensor) -> None:
        # torch.compile fails at the first call (forward) or the first backward; neither has
        # changed any state yet, so the step is simply redone eagerly.
        self._compile_pending = False
        try:
            self._eager_step(idx)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.train_forward, _ = _stacked_forward(self.base, self.per_member_inputs, None)
            self.compile_note = f"failed, ran eagerly ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            self._eager_step(idx)

    def _graph_step(self, idx: torch.Tensor) -> None:
        if self._graph is not None:
            assert self._static_idx is not None
            self._static_idx.copy_(idx)
            self._graph.replay()
            return
        if self._warmup_steps < CUDA_GRAPH_WARMUP_STEPS:
            # Warm-up on a side stream, as torch.cuda.graph's documentation does.
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._eager_step(idx)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._warmup_steps += 1
            return
        self._static_idx = idx.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._eager_step(self._static_idx)  # recorded, not run
        except RuntimeError as exc:
            # Nothing ran during the failed capture; carry on eagerly and say so in the record.
            self.cuda_graphs = False
            self.cuda_graph_note = f"capture failed, ran eagerly ({str(exc).splitlines()[0][:200]})"
            self._eager_step(idx)
            return
        self._graph = graph
        self.cuda_graph_note = "captured (full batches replayed; the last partial batch eager)"
        graph.replay()

    # -- evaluation

    def set_mode(self, training: bool) -> None:
        self.base.train(training)

    def evaluate(
        self, val_idx: torch.Tensor, *, keep_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Each member's validation loss sum (K,), predicted classes (K, n_val) and, with
        ``keep_logits``, logits (K, n_val, classes), on the device."""

        def forward(rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
            return self.eval_forward(self.params, self.buffers, rgb, xyza)  # (K, B, classes)

        val = engine.predict(
            forward, self.work, indices=val_idx, device=self.device, precision=self.precision,
            # K models see each chunk at once: on the CPU keep the activations near the loop's.
            batch_size=engine.eval_batch_size(self.device, self.batch_size, members=self.k),
            keep_logits=keep_logits,
        )  # fmt: skip
        assert val.loss_sum is not None
        return val.loss_sum, val.classes, val.logits

    def member_model(self, index: int, cfg: RunConfig, num_classes: int) -> nn.Module:
        """Member ``index`` as a real model on the device (channels_last, eval mode), like train_run's."""
        from fusioncli import models

        size = engine.input_size(self.work)
        with torch.device("meta"):
            model = models.create_model(cfg.strategy, cfg.backbone, num_classes, input_size=size, **cfg.input_norms)
        model = model.to_empty(device=self.device)
        tensor: torch.Tensor
        with torch.no_grad():
            for name, tensor in model.named_parameters():
                tensor.copy_(self.params[name][index])
            for name, tensor in model.named_buffers():
                tensor.copy_(self.buffers[name][index])
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format
        model.eval()
        return model


# --------------------------------------------------------------------------- training


def _check_group(cfgs: Sequence[RunConfig]) -> None:
    if not all(is_stackable(c) for c in cfgs):
        raise BadInputError(
            "runs with --modality-dropout > 0 cannot train in a stacked group",
            hint="train them one at a time (train_run, or the sweep's loop executor)",
        )
    keys = {stack_key(c) for c in cfgs}
    if len(keys) > 1:
        raise BadInputError(
            "these runs cannot train together: a stacked group must share strategy, backbone, --lidar-norm, epochs, "
            "batch size, device, precision, --limit-per-class and --train-per-class",
            hint="split them with fusioncli.train.stacked.group_configs()",
        )


def train_stacked(
    configs: Sequence[RunConfig],
    data: PreparedData,
    *,
    on_epoch: StackedEpochCallback | None = None,
    cuda_graphs: bool | None = None,
    compile: bool = False,
) -> list[RunResult]:
    """Train ``configs`` together as one stacked model; one :class:`RunResult` per config, in order.

    ``configs`` must have equal :func:`stack_key` (use :func:`group_configs`); a single config
    that cannot be stacked is handed to ``train_run``. ``data`` is the full prepared dataset, as
    for ``train_run``. ``on_epoch(config, row)`` gets each member's history row (``config`` as
    passed in) once the group's epoch ends; its time is excluded from every timing.

    ``cuda_graphs`` (default: on for CUDA) captures the fixed-shape step as a CUDA graph;
    ``compile`` runs the stacked forward through ``torch.compile`` (once per architecture).
    A non-finite loss in any member raises :class:`RunFailedError` naming the runs concerned;
    the group's other runs are then unfinished too (rerun them one at a time to isolate it).

    Records: as ``train_run``'s, with ``timing.train_seconds`` / ``epoch_seconds`` /
    ``train_epoch_seconds`` the wall time of the whole group (the group trains all members in
    that time; ``timing.stacked_amortized_train_seconds`` divides it by the group size),
    ``timing.samples_per_s`` this run's own training samples per second (the group's throughput
    is group size times it), and ``memory`` the group's shared peaks (``memory.peak_note``).
    """
    from fusioncli import models  # the registry, imported late so tests can swap builders

    if not configs:
        return []
    cfgs = [c.resolve() for c in configs]
    if len(cfgs) == 1 and not is_stackable(cfgs[0]):
        callback = None if on_epoch is None else (lambda row: on_epoch(configs[0], row))
        return [train_run(cfgs[0], data, on_epoch=callback)]
    _check_group(cfgs)

    started_at = utc_now()
    first = cfgs[0]
    k = len(cfgs)
    device = torch.device(first.device)
    precision = first.precision
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    elif cuda_graphs and device.type != "cuda":
        raise BadInputError(f"CUDA graphs need a CUDA device (the group runs on {first.device})")
    rids = [run_id(c, data.fingerprint) for c in cfgs]

    work = run_work(first, data, device)
    train_idx = work.train_indices
    val_idx = work.val_indices
    n_train, n_val = train_idx.numel(), val_idx.numel()
    val_labels = work.labels[val_idx]

    members = []
    size = engine.input_size(work)
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)  # each member initialised exactly as train_run does
        members.append(
            models.create_model(cfg.strategy, cfg.backbone, work.num_classes, input_size=size, **cfg.input_norms)
        )
    params = models.parameter_counts(members[0])
    flops = models.flops_per_sample(members[0])  # zero inputs: draws no random numbers
    # One seed for all: one permutation and one gather serve every member.
    shared_order = len({c.seed for c in cfgs}) == 1
    group = _StackedGroup(
        members, cfgs, work, per_member_inputs=not shared_order, compile_forward=compile, cuda_graphs=cuda_graphs
    )
    del members
    schedules = [lr_schedule(c) for c in cfgs]
    # Each member's permutation generator, as train_run has it (CPU, seeded with the run's seed).
    perm_gens = [torch.Generator(device="cpu").manual_seed(c.seed) for c in cfgs]
    if shared_order:
        perm_gens = perm_gens[:1]

    histories: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    epoch_seconds: list[float] = []
    train_phase_seconds: list[float] = []
    preds = val_labels.expand(k, n_val)
    val_logits: torch.Tensor | None = None
    val_losses = [float("nan")] * k
    callback_seconds = 0.0
    with engine.cudnn_mode(device, precision):
        run_start = clock(device)
        for epoch in range(1, first.epochs + 1):
            lrs = [s[epoch - 1] for s in schedules]
            t0 = clock(device)
            group.set_mode(True)
            group.adam.set_lr(lrs)
            group.loss_sums.zero_()
            orders = torch.stack([train_idx[torch.randperm(n_train, generator=g).to(device)] for g in perm_gens])
            if shared_order:
                orders = orders[0]
            for start in range(0, n_train, first.batch_size):
                group.step(orders[..., start : start + first.batch_size])
            t_train = clock(device)
            group.set_mode(False)
            val_loss_sums, preds, val_logits = group.evaluate(val_idx, keep_logits=epoch == first.epochs)
            correct = (preds == val_labels).sum(dim=1)
            # the one host-device sync of the epoch
            sums = torch.stack([group.loss_sums, val_loss_sums, correct.to(torch.float64)]).tolist()
            t1 = clock(device)
            rows = []
            diverged = []
            for i in range(k):
                train_loss = sums[0][i] / n_train
                val_losses[i] = sums[1][i] / n_val
                if not (math.isfinite(train_loss) and math.isfinite(val_losses[i])):
                    diverged.append(f"{rids[i]} (lr {cfgs[i].lr:g}, seed {cfgs[i].seed})")
                rows.append(
                    {
                        "epoch": epoch,
                        "train_loss": train_loss,
                        "val_loss": val_losses[i],
                        "val_accuracy": int(sums[2][i]) / n_val,
                        "lr": lrs[i],
                        "seconds": t1 - t0,
                    }
                )
            if diverged:
                raise RunFailedError(
                    f"stacked group of {k}: loss became non-finite at epoch {epoch} in run(s) {', '.join(diverged)}; "
                    "the group's other runs did not finish either (train them one at a time to isolate it); "
                    "try a lower --lr or --precision fp32"
                )
            epoch_seconds.append(t1 - t0)
            train_phase_seconds.append(t_train - t0)
            for i, row in enumerate(rows):
                histories[i].append(row)
            if on_epoch is not None:
                t_cb = time.perf_counter()
                for cfg, row in zip(configs, rows, strict=True):
                    on_epoch(cfg, dict(row))
                callback_seconds += time.perf_counter() - t_cb
        train_seconds = clock(device) - run_start - callback_seconds

    memory = {
        **peak_memory(device),
        "stacked_group_size": k,
        "peak_note": (
            f"peaks of the whole stacked group ({k} runs trained together on one device), "
            "shared by every run of the group, not per run"
        ),
    }
    steady = "epochs 2..N (first epoch excluded as warm-up" if first.epochs > 1 else "the only epoch (includes warm-up"
    timing_notes = {
        "executor": "stacked",
        "stacked_group_size": k,
        "stacked_run_ids": rids,
        "stacked_amortized_train_seconds": train_seconds / k,
        "stacked_note": (
            f"train_seconds, epoch_seconds and train_epoch_seconds are the wall time of the whole stacked group "
            f"of {k} runs trained together; stacked_amortized_train_seconds is train_seconds / {k}"
        ),
        "samples_per_s_note": (
            f"this run's training samples/s over {steady}; validation not timed), trained in a stacked group "
            f"of {k} (the group's throughput is {k}x this)"
        ),
        "cuda_graph": group.cuda_graph_note,
        "compile": group.compile_note,
    }
    results = []
    for i, cfg in enumerate(cfgs):
        record = finished_record(
            cfg,
            work,
            data.fingerprint,
            val_labels=val_labels,
            preds=preds[i],
            val_loss=val_losses[i],
            val_logits=None if val_logits is None else val_logits[i],
            history=histories[i],
            params=params,
            flops=flops,
            train_seconds=train_seconds,
            epoch_seconds=list(epoch_seconds),
            train_phase_seconds=list(train_phase_seconds),
            started_at=started_at,
            memory=dict(memory),
            timing_notes=dict(timing_notes),
        )
        results.append(RunResult(record=record, model=group.member_model(i, cfg, work.num_classes)))
    return results
