"""A PyTorch Connectomics v1 configuration, merged as PyTC's ``load_cfg`` merges it.

PyTC builds its config with yacs: the default tree (``defaults_v1.yaml`` beside this module, made
from PyTC's own ``connectomics/config/defaults.py``), then ``--config-base``, then
``--config-file``, then the trailing ``KEY VALUE`` options (``merge_from_list``), then, with
``--inference``, ``update_inference_cfg`` (``INFERENCE.*`` values over ``DATASET.*`` and
``MODEL.*``). yacs's rules, reproduced here without yacs:

- a key that is not in the tree is an error (``Non-existent config key``), naming the dotted key;
- a string value is read as a Python literal where it is one (``ast.literal_eval``: ``"[1, 2]"``
  is a list, ``"0.5"`` a float), else kept as text, in files and options alike;
- a value must have the type of the default it replaces, except that a list and a tuple replace
  each other and ``None`` replaces or is replaced by anything (yacs 0.1.8); an ``int`` does not
  replace a ``float``;
- a mapping merges into a sub-tree key by key; anything else replaces the value.

The result is a :class:`PytcConfig`: the merged tree as plain dicts (``cfg["MODEL"]["FILTERS"]``)
and which keys differ from PyTC's defaults. Nothing here reads data or imports torch.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

import yaml

from service.documents.loading import load_yaml_text
from workers.errors import SpecError

Tree = dict[str, Any]


@lru_cache(maxsize=1)
def _defaults() -> Tree:
    """The tree as read once; never handed out (callers get copies)."""
    tree = yaml.safe_load((files("service.pytc") / "defaults_v1.yaml").read_text(encoding="utf-8"))
    assert isinstance(tree, dict)
    return tree


def pytc_defaults() -> Tree:
    """PyTC v1's default configuration tree (a fresh copy)."""
    return copy.deepcopy(_defaults())


@dataclass(frozen=True)
class PytcConfig:
    """A merged PyTC configuration: ``tree`` as yacs would hold it, ``inference`` as ``--inference``."""

    tree: Tree
    inference: bool
    read: set[str] = field(default_factory=set, compare=False)  # every key the conversion looked at

    def get(self, dotted: str) -> Any:
        self.read.add(dotted)
        node: Any = self.tree
        for part in dotted.split("."):
            node = node[part]
        return node

    def is_default(self, dotted: str) -> bool:
        default: Any = _defaults()
        for part in dotted.split("."):
            default = default[part]
        return bool(_same(self.get(dotted), default))

    def changed(self) -> Iterator[str]:
        """Every dotted key whose value is not PyTC's default."""
        yield from _changed(self.tree, _defaults(), "")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return (type(a) is type(b) and a == b) or (a is None and b is None)


def _changed(tree: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str) -> Iterator[str]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        default = defaults.get(key)
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            yield from _changed(value, default, dotted + ".")
        elif not _same(value, default):
            yield dotted


def load_pytc_config(
    texts: Sequence[tuple[str, str]], overrides: Sequence[str] = (), *, inference: bool = False
) -> PytcConfig:
    """Merge PyTC YAML texts (``(name, text)``: the base, then the experiment) over PyTC's defaults,
    then ``overrides`` (``KEY VALUE ...`` as PyTC's ``main.py`` takes them), then, with
    ``inference``, PyTC's ``update_inference_cfg``. Errors are SpecErrors naming the dotted key
    (or the file, for YAML that does not parse)."""
    tree = pytc_defaults()
    for name, text in texts:
        _merge(_decode_node(_load_yaml(name, text)), tree, "")
    _merge_list(tree, overrides)
    if inference:
        _update_inference(tree)
    return PytcConfig(tree, inference)


def _load_yaml(name: str, text: str) -> Mapping[str, Any]:
    loaded = load_yaml_text(text, name)  # bounded: no alias bombs, no nesting past the job limits
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SpecError(
            name, f"a PyTC config is a mapping of sections (MODEL, DATASET, ...), got {type(loaded).__name__}"
        )
    return loaded


def _decode(value: Any) -> Any:
    """yacs ``_decode_cfg_value``: a string that is a Python literal becomes that literal."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _decode_node(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _decode_node(v) for k, v in node.items()}
    return _decode(node)


def _merge(source: Mapping[str, Any], target: Tree, prefix: str) -> None:
    for key, value in source.items():
        dotted = f"{prefix}{key}"
        if key not in target:
            raise SpecError(dotted, "not a PyTC v1 config key (yacs: Non-existent config key)")
        if isinstance(target[key], dict):
            if not isinstance(value, dict):
                raise SpecError(dotted, f"is a section of PyTC's config; expected a mapping, got {value!r}")
            _merge(value, target[key], dotted + ".")
        else:
            target[key] = _coerce(copy.deepcopy(value), target[key], dotted)


def _coerce(value: Any, original: Any, dotted: str) -> Any:
    """yacs ``_check_and_coerce_cfg_value_type``."""
    if type(value) is type(original) or value is None or original is None:
        return value
    if isinstance(value, list | tuple) and isinstance(original, list | tuple):
        return list(value)
    raise SpecError(
        dotted,
        f"type mismatch ({type(original).__name__} vs. {type(value).__name__}) with value {value!r}: "
        f"the value it replaces (PyTC's default or an earlier file's) is {original!r}; yacs refuses this too",
    )


def _merge_list(tree: Tree, overrides: Sequence[str]) -> None:
    """yacs ``merge_from_list``: ``KEY VALUE`` pairs, the key dotted and existing."""
    if len(overrides) % 2:
        raise SpecError(
            "overrides", f"KEY VALUE pairs expected, got an odd number of items: {list(overrides)}"
        )
    for key, raw in zip(overrides[::2], overrides[1::2], strict=True):
        node: Any = tree
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise SpecError(".".join(parts[: depth + 1]), f"{key}: not a PyTC v1 config section")
        last = parts[-1]
        if not isinstance(node, dict) or last not in node or isinstance(node[last], dict):
            raise SpecError(key, "not a PyTC v1 config key (yacs: Non-existent config key)")
        node[last] = _coerce(_decode(raw), node[last], key)


def _update_inference(tree: Tree) -> None:
    """PyTC's ``update_inference_cfg``: what ``--inference`` puts over the training values."""
    inf, data, model = tree["INFERENCE"], tree["DATASET"], tree["MODEL"]
    if inf["INPUT_PATH"] is not None:
        data["INPUT_PATH"] = inf["INPUT_PATH"]
    data["IMAGE_NAME"] = inf["IMAGE_NAME"]
    data["OUTPUT_PATH"] = inf["OUTPUT_PATH"]
    for source, target in (("PAD_SIZE", "PAD_SIZE"), ("IS_ABSOLUTE_PATH", "IS_ABSOLUTE_PATH")):
        if inf[source] is not None:
            data[target] = inf[source]
    for source, target in (("DO_CHUNK_TITLE", "DO_CHUNK_TITLE"), ("DATA_SCALE", "DATA_SCALE")):
        if inf[source] is not None:
            data[target] = inf[source]
    if inf["INPUT_SIZE"] is not None:
        model["INPUT_SIZE"] = inf["INPUT_SIZE"]
    if inf["OUTPUT_SIZE"] is not None:
        model["OUTPUT_SIZE"] = inf["OUTPUT_SIZE"]
    model["RETURN_FEATS"] = inf["MODEL_RETURN_FEATS"]
    name = str(inf["OUTPUT_NAME"])
    parts = name.split(".")
    if data["DO_CHUNK_TITLE"] or inf["DO_SINGLY"]:
        if len(parts) == 2:
            inf["OUTPUT_NAME"] = parts[0]
    elif len(parts) == 1:
        inf["OUTPUT_NAME"] = parts[0] + ".h5"
