"""The strategy registry: every fusion strategy is one decorated builder function.

A builder takes the backbone preset and the number of classes and returns a model whose forward
is ``model(rgb, xyza) -> logits (B, num_classes)`` and whose top-level children (and any
parameters set directly on it) are named ``encoder*``, ``fusion*`` or ``head*``. The input size
reaches a builder through the preset (``backbone.input_size``, (H, W); ``backbone.out_shape``
and ``backbone.flat_features`` are the stem's output at that size), never as an argument of its
own, so a builder written for 64 x 64 data keeps its signature::

    @register_strategy("my-fusion", description="what it does, in one line")
    def build_my_fusion(backbone: BackboneSpec, num_classes: int) -> nn.Module:
        ...

The CLI's choices come from :func:`strategy_names`, so registering is all it takes to add one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.models.backbones import BACKBONE_SPECS, BACKBONES, DEFAULT_INPUT_SIZE, BackboneSpec, as_input_size

if TYPE_CHECKING:  # the registry itself is torch-free; models are built by the builders
    from torch import nn

Builder = Callable[[BackboneSpec, int], "nn.Module"]

# Prefixes of the top-level module names; parameter_counts splits the parameters by them.
PART_PREFIXES: tuple[str, ...] = ("encoder", "fusion", "head")
MODALITIES: tuple[str, ...] = ("rgb", "lidar")
# create_model notes the input size a model was built for on the model itself, so whatever
# holds the model later (FLOP counts, checkpoints, Ray's weights) knows it without being told.
INPUT_SIZE_ATTR = "fusioncli_input_size"


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin strategy came from: the plugin's file and the sha256 of its source."""

    file: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "sha256": self.sha256}


@dataclass(frozen=True)
class StrategySpec:
    """One registered strategy: its name, a one-line description, the modalities it reads, and
    the plugin that registered it (None for the built-ins)."""

    name: str
    description: str
    modalities: tuple[str, ...]
    builder: Builder
    plugin: PluginSource | None = None


# Insertion-ordered, so listings follow registration order (the seed's models first).
_REGISTRY: dict[str, StrategySpec] = {}
# The plugin being loaded (fusioncli.models.plugins), innermost last: what registrations made
# while it runs are attributed to.
_LOADING: list[PluginSource] = []


@contextmanager
def registering_from(source: PluginSource) -> Iterator[None]:
    """Attribute the strategies registered inside this block to the plugin ``source``."""
    _LOADING.append(source)
    try:
        yield
    finally:
        _LOADING.pop()


def register_strategy(
    name: str, *, description: str, modalities: Sequence[str] = MODALITIES
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` as strategy ``name``; a duplicate name raises ValueError."""
    mods = tuple(modalities)
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown or not mods:
        raise ValueError(f"strategy {name!r}: modalities must be a non-empty subset of {MODALITIES}, got {mods}")

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered")
        plugin = _LOADING[-1] if _LOADING else None
        _REGISTRY[name] = StrategySpec(
            name=name, description=description, modalities=mods, builder=builder, plugin=plugin
        )
        return builder

    return decorate


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (for tests and plugins that register temporarily)."""
    _REGISTRY.pop(name, None)


def strategy_names() -> list[str]:
    """The registered strategy names, in registration order."""
    return list(_REGISTRY)


def strategy_specs() -> list[StrategySpec]:
    """The registered strategies, in registration order."""
    return list(_REGISTRY.values())


def get_strategy(name: str) -> StrategySpec:
    """The spec registered as ``name``; an unknown name raises BadInputError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(
            f"unknown strategy {name!r}; known strategies: {', '.join(_REGISTRY) or '(none)'}",
            hint="`fusioncli strategies` lists them with their sizes",
        ) from None


def plugin_source(name: str) -> PluginSource | None:
    """The plugin that registered strategy ``name``; None for a built-in or an unknown name."""
    spec = _REGISTRY.get(name)
    return None if spec is None else spec.plugin


def get_backbone(name: str, input_size: int | Sequence[int] = DEFAULT_INPUT_SIZE) -> BackboneSpec:
    """The backbone preset ``name`` sized for ``input_size`` (one side or (H, W); default 64 x 64).

    An unknown name raises BadInputError listing the known ones; an input too small for the
    backbone's pooling raises BadInputError naming the size and the minimum.
    """
    try:
        spec = BACKBONE_SPECS[name]
    except KeyError:
        raise BadInputError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}") from None
    size = as_input_size(input_size)
    return spec if size == spec.input_size else spec.at(size)


def model_input_size(model: object) -> tuple[int, int]:
    """The (H, W) input size ``model`` was built for by :func:`create_model` (64 x 64 for a model
    built otherwise: the size every model had before sizes varied)."""
    size = getattr(model, INPUT_SIZE_ATTR, None)
    return DEFAULT_INPUT_SIZE if size is None else as_input_size(size)


def create_model(
    name: str,
    backbone: str = "seed",
    num_classes: int = 2,
    *,
    lidar_norm: str = "seed",
    rgb_norm: str = "seed",
    input_size: int | Sequence[int] = DEFAULT_INPUT_SIZE,
) -> nn.Module:
    """Build strategy ``name`` on ``backbone`` with a ``num_classes``-way head, for ``input_size``
    images (one side or (H, W); the data's ``rgb.shape[-2:]``, 64 x 64 by default).

    The builder sees the size through the backbone spec (``backbone.input_size``); the model
    remembers it (:func:`model_input_size`). ``lidar_norm`` and ``rgb_norm`` (a run's
    ``--lidar-norm`` / ``--rgb-norm``, :attr:`RunConfig.input_norms`) attach the input steps
    (:func:`fusioncli.models.inputs.attach_input_norms`); ``seed`` leaves the builder's model as
    it is. The model is built on the current default device (wrap in ``with
    torch.device("meta"):`` to size it without allocating). Unknown names raise
    :class:`BadInputError` listing known ones; so does an input too small for the backbone.
    """
    spec = get_strategy(name)
    bb = get_backbone(backbone, input_size)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BadInputError(f"num_classes must be a positive integer, got {num_classes!r}")
    if spec.plugin is None:
        model = spec.builder(bb, num_classes)
    else:
        try:
            model = spec.builder(bb, num_classes)
        except Exception as exc:
            raise RunFailedError(
                f"strategy {name!r} from plugin {spec.plugin.file} failed to build: {type(exc).__name__}: {exc}"
            ) from exc
    _check_part_names(name, model)
    # A plain attribute: not a parameter, buffer or child, so weights and part counts are unchanged.
    setattr(model, INPUT_SIZE_ATTR, bb.input_size)
    if lidar_norm == "seed" and rgb_norm == "seed":
        return model
    from fusioncli.models.inputs import attach_input_norms  # torch-side: the registry stays torch-free

    return attach_input_norms(model, lidar_norm=lidar_norm, rgb_norm=rgb_norm)


def _check_part_names(name: str, model: nn.Module) -> None:
    """Enforce the naming contract so parameter counts can always be split into parts."""
    top_level = {n.split(".", 1)[0] for n, _ in model.named_parameters()}
    top_level |= {n for n, _ in model.named_children()}
    bad = sorted(n for n in top_level if not n.startswith(PART_PREFIXES))
    if bad:
        raise RunFailedError(
            f"strategy {name!r} built a model with top-level parts {bad} not named "
            f"{'/'.join(p + '*' for p in PART_PREFIXES)}"
        )
