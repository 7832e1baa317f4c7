"""Turn a :class:`models.ref.ModelRef` into a ready module on the CPU, with its identity.

Three kinds: a TorchScript file, a ``torch.export`` program, or a built-in architecture with an
optional checkpoint. ``workers`` imports ``models``, never the reverse, so the reference is typed
structurally (:class:`ModelSpec`); ``models.ref.ModelRef`` satisfies it. The identity
(``sha256``) is the hash of the file that decides the weights; workers key their done markers on
it, so a changed file never reuses stale output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from models.checkpoint import extract_state_dict, load_checkpoint, load_failure, load_weights
from models.errors import CheckpointError, ModelConfigError, ModelNotFoundError
from models.pytc.registry import ARCHITECTURES
from models.torch_files import MAX_MODEL_BYTES_VARIABLE, max_model_bytes

logger = logging.getLogger(__name__)

# Spatial (z, y, x) shape of the zero input used to learn a file model's channels when the caller
# gives none: the contract's recommended patch size. Callers should pass their real patch size.
DEFAULT_PROBE_SHAPE: tuple[int, int, int] = (17, 129, 129)

_HASH_BLOCK_BYTES = 1 << 20


class ModelSpec(Protocol):
    """What :func:`load_model` reads of a ``models.ref.ModelRef``."""

    @property
    def kind(self) -> str: ...
    @property
    def path(self) -> str | None: ...
    @property
    def architecture(self) -> str | None: ...
    @property
    def checkpoint(self) -> str | None: ...
    def config_dict(self) -> dict[str, Any]: ...


@dataclass
class LoadedModel:
    """A module in eval mode on the CPU plus what the engine needs to know about it.

    ``fixed_input_shape`` is the full (N, C, Z, Y, X) input shape an exported program was traced
    with when all its dimensions are static (it then accepts nothing else); None otherwise.
    """

    module: nn.Module
    in_channels: int
    out_channels: int
    sha256: str
    description: str
    fixed_input_shape: tuple[int, ...] | None = None
    channels_last: bool = (
        False  # its weights were made channels-last (workers.inference.predictor); feed it so
    )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    source = _existing_file(path, "model file")
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def load_model(ref: ModelSpec, probe_shape: tuple[int, int, int] | None = None) -> LoadedModel:
    """Load the model ``ref`` names, on the CPU, in eval mode.

    For file models the channels are learnt by one forward pass on zeros of shape
    ``(1, in_channels, *probe_shape)``; pass the job's patch size so the probe also proves the
    model accepts it. Raises :class:`ModelNotFoundError` for a missing file, :class:`CheckpointError`
    for one that cannot be read, :class:`ModelConfigError` for a reference or config that does not
    work (unknown architecture, bad config key, a model that fails on the probe).
    """
    if ref.kind == "torchscript":
        loaded = _load_torchscript(_required(ref.path, "torchscript", "path"), probe_shape)
    elif ref.kind == "exported":
        loaded = _load_exported(_required(ref.path, "exported", "path"), probe_shape)
    elif ref.kind == "architecture":
        loaded = _load_architecture(ref)
    else:
        raise ModelConfigError(f"unknown model kind {ref.kind!r}")
    logger.info(
        "loaded %s: %d -> %d channels, sha256 %s",
        loaded.description,
        loaded.in_channels,
        loaded.out_channels,
        loaded.sha256[:12],
    )
    return loaded


def _required(value: str | None, kind: str, field: str) -> str:
    if not value:
        raise ModelConfigError(f"a model of kind {kind!r} needs {field!r}")
    return value


def _existing_file(path: str | Path, what: str) -> Path:
    source = Path(path)
    if not source.exists():
        raise ModelNotFoundError(f"{what} {source} does not exist")
    if not source.is_file():
        raise CheckpointError(f"{what} {source} is not a file")
    return source


def _load_torchscript(path: str, probe_shape: tuple[int, int, int] | None) -> LoadedModel:
    source = _existing_file(path, "torchscript model")
    sha = file_sha256(source)
    try:
        with warnings.catch_warnings():
            # torch >= 2.12 deprecates torch.jit; TorchScript files are still a format we accept.
            warnings.filterwarnings("ignore", message=r".*torch\.jit", category=DeprecationWarning)
            module = torch.jit.load(str(source), map_location="cpu")
    except Exception as exc:  # jit.load raises RuntimeError or worse on junk; the cause is chained
        raise CheckpointError(load_failure(f"torchscript model {source}", exc)) from exc
    module.eval()
    in_channels, out_channels = _probe_channels(module, source, probe_shape, None)
    return LoadedModel(module, in_channels, out_channels, sha, f"torchscript {source}")


def _load_exported(path: str, probe_shape: tuple[int, int, int] | None) -> LoadedModel:
    source = _existing_file(path, "exported model")
    sha = file_sha256(source)
    # torch.export logs a file it cannot read as a WARNING with a traceback on stderr; the error
    # below says it in one line (its cause chained), so that log is kept down to errors meanwhile.
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)
    try:
        program = torch.export.load(str(source))
    except Exception as exc:  # same as above: an open set of failures, chained
        raise CheckpointError(load_failure(f"exported model {source}", exc)) from exc
    finally:
        export_log.setLevel(level)
    graph_module = program.module()
    fixed = _static_input_shape(graph_module)
    module = ExportedModule(graph_module)
    in_channels, out_channels = _probe_channels(module, source, probe_shape, fixed)
    return LoadedModel(module, in_channels, out_channels, sha, f"exported {source}", fixed)


class ExportedModule(nn.Module):
    """An exported program's module that tolerates ``.eval()`` / ``.train()``.

    torch refuses train()/eval() on exported modules (NotImplementedError): the mode was fixed
    when the program was traced, so it must have been exported from a model in eval mode. Callers
    treat every model alike (``module.to(device).eval()``), so the mode switch is a no-op here;
    ``.to()`` still moves the program's parameters and buffers.
    """

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module
        self.training = False

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode  # only the flag: the program's own mode is fixed
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def _static_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The first input's shape when the exported graph fixed every dimension of it."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    for node in graph.nodes:
        if node.op == "placeholder":
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            if shape is None:
                return None
            dims = list(shape)
            if all(isinstance(d, int) for d in dims):
                return tuple(dims)
            return None
    return None


def _probe_channels(
    module: nn.Module,
    source: Path,
    probe_shape: tuple[int, int, int] | None,
    fixed: tuple[int, ...] | None,
) -> tuple[int, int]:
    """(in_channels, out_channels) from one forward pass on zeros."""
    exposed = getattr(module, "in_channels", None)
    if fixed is not None:
        candidates, shape_rest = [fixed[1]], fixed[2:]
        batch = fixed[0]
    else:
        candidates = [exposed] if isinstance(exposed, int) else [1, *_first_conv_in_channels(module)]
        shape_rest, batch = tuple(probe_shape or DEFAULT_PROBE_SHAPE), 1
    errors: list[str] = []
    for in_channels in dict.fromkeys(candidates):
        try:
            with torch.no_grad():
                output = module(torch.zeros((batch, in_channels, *shape_rest)))
        except Exception as exc:  # a foreign model can fail any way; we report every attempt
            errors.append(f"in_channels={in_channels}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(output, torch.Tensor) or output.dim() != 5:
            raise ModelConfigError(
                f"model {source} must return one (N, C, Z, Y, X) tensor, returned "
                f"{_describe(output)} for input {(batch, in_channels, *shape_rest)}"
            )
        return in_channels, int(output.shape[1])
    raise ModelConfigError(
        f"model {source} cannot run on a zero input of spatial shape {shape_rest}: " + "; ".join(errors)
    )


def _first_conv_in_channels(module: nn.Module) -> list[int]:
    # A Conv3d weight is (out, in / groups, kz, ky, kx); the first 5-D parameter is usually the stem.
    for parameter in module.parameters():
        if parameter.dim() == 5:
            return [int(parameter.shape[1])]
    return []


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    return f"a {type(output).__name__}"


def _load_architecture(ref: ModelSpec) -> LoadedModel:
    name = _required(ref.architecture, "architecture", "architecture")
    build = ARCHITECTURES.get(name)
    if build is None:
        raise ModelConfigError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    config = ref.config_dict()
    identity = _config_sha256(name, config)
    # Build with a seed drawn from the config, leaving the caller's RNG untouched: a model without
    # a checkpoint then has the same random weights everywhere, so its identity hash is honest.
    check_weights_size(build, config, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(identity[:15], 16))
        module = build(config)
    if ref.checkpoint:
        source = _existing_file(ref.checkpoint, "checkpoint")
        sha = file_sha256(source)
        state = extract_state_dict(load_checkpoint(source), source)
        adapt = getattr(module, "adapt_state_dict", None)  # e.g. PyTC's RepVGG deploy folding
        load_weights(module, adapt(dict(state)) if callable(adapt) else state, source)
        description = f"{name} {_canonical_json(config)} weights {source}"
    else:
        sha = identity
        description = f"{name} {_canonical_json(config)} random init"
    module.eval()
    in_channels, out_channels = _declared_channels(module, ref)
    return LoadedModel(module, in_channels, out_channels, sha, description)


def check_weights_size(build: Any, config: dict[str, Any], name: str) -> None:
    """The weights ``config`` builds, counted on torch's meta device (no memory, milliseconds),
    at most ``PYTC_MAX_MODEL_BYTES``: a config of thousands of filters is refused before its
    gigabytes are allocated and initialised. A build the meta device cannot run is left to the
    real one, which says what is wrong."""
    try:
        with torch.device("meta"):
            meta = build(config)
    except Exception:  # any failure of a foreign builder; the real build below reports it
        return
    size = sum(p.numel() * p.element_size() for p in meta.parameters())
    limit = max_model_bytes()
    if size > limit:
        count = sum(p.numel() for p in meta.parameters())
        raise ModelConfigError(
            f"architecture {name!r} with this config has {count:,} parameters ({size:,} bytes), more "
            f"than the {limit:,} bytes a model may take ({MAX_MODEL_BYTES_VARIABLE})"
        )


def _declared_channels(module: nn.Module, ref: ModelSpec) -> tuple[int, int]:
    in_channels = getattr(module, "in_channels", None)
    out_channels = getattr(module, "out_channels", None)
    if not isinstance(in_channels, int) or not isinstance(out_channels, int):
        raise ModelConfigError(f"architecture {ref.architecture!r} does not declare its channels")
    return in_channels, out_channels


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _config_sha256(name: str, config: dict[str, Any]) -> str:
    text = _canonical_json({"architecture": name, "config": config})
    return hashlib.sha256(text.encode()).hexdigest()
