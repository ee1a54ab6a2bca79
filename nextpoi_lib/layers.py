"""Parameter layers: the one resolver from YAML files, `extends`, inline sections and profiles to one mapping.

Every entry point — `nextpoi run`, `nextpoi batch`, the experiment notebook, `experiment.load_config` from
Python — resolves its parameters here, with the same rules, later layers winning key by key:

    library defaults <- parameter files (left to right, each after the files its `extends:` names)
                     <- `extends` names (relative to parameters/) <- inline sections <- the profile <- overrides

The run name defaults to the stem of the last parameter file; an `extends` base, an inline section or a profile
never names the run. A profile is None, "auto" (gpu when a CUDA GPU is visible, else cpu), a bare name ("cpu":
parameters/profiles/cpu.yaml) or a path; its name is recorded as the config's `profile`.
The result is a plain mapping: `config.from_dict` types and checks it. Before that, each file is refused with a
ConfigError naming it when it holds a key twice in one mapping (with the line), holds no settings (profiles
excepted), or `extends:` a missing file (named as written and as resolved) or closes a cycle (the chain named).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from .config import ConfigError, translate_legacy_keys

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PARAMETERS_DIR = PACKAGE_ROOT / "parameters"
PROFILES_DIR = PARAMETERS_DIR / "profiles"

Layer = str | os.PathLike | dict


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Later layers win key by key; nested sections merge rather than replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _DuplicateKey(yaml.YAMLError):
    """A mapping key given twice; `read_yaml` turns it into a ConfigError naming the file."""

    def __init__(self, key: str, line: int, first_line: int):
        super().__init__(f"{key!r} on line {line} (first on line {first_line})")
        self.key, self.line, self.first_line = key, line, first_line


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain PyYAML keeps the last one silently, so
    a second `training:` block would drop the first one's settings). Merge keys (`<<:`) may still be overridden."""

    def construct_document(self, node):
        self._key_paths = {}
        self._record_key_paths(node, "")
        return super().construct_document(node)

    def _record_key_paths(self, node, prefix: str) -> None:
        # The dotted path of every mapping, so that a duplicate is named as `training.epochs`, not `epochs`.
        if isinstance(node, yaml.MappingNode):
            if id(node) in self._key_paths:
                return
            self._key_paths[id(node)] = prefix
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self._record_key_paths(value_node, f"{prefix}{key}.")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._record_key_paths(item, f"{prefix.rstrip('.')}[{index}].")

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class explains it
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise _DuplicateKey(getattr(self, "_key_paths", {}).get(id(node), "") + str(key), line, first)
                seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml_text(text: str) -> Any:
    """YAML text as Python values, refusing duplicate keys (`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | os.PathLike, _chain: tuple[Path, ...] = (), *,
              allow_empty: bool | None = None) -> dict[str, Any]:
    """One parameter file, merged over the files its `extends:` key names (relative to the file).

    Refused with a ConfigError: a missing file, invalid YAML, a key given twice in one mapping, a file that is
    not a mapping, a file with no settings (unless it is a profile, `allow_empty` defaulting to whether the file
    lies in a profiles/ folder: parameters/profiles/gpu.yaml is empty on purpose), an `extends:` that names a
    missing file or closes a cycle."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Parameter file {str(path)!r} does not exist. Check the path (it is read relative "
                          f"to the current folder {str(Path.cwd())!r}).")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Parameter file {str(path)!r} cannot be read as text: {error}. Give a YAML file "
                          f"(UTF-8).") from error
    try:
        data = load_yaml_text(text)
    except _DuplicateKey as duplicate:
        raise ConfigError(
            f"Parameter file {str(path)!r}, line {duplicate.line}: the key {duplicate.key!r} is given twice in "
            f"one mapping (first on line {duplicate.first_line}). YAML would keep only the last one and silently "
            f"drop the other's settings: merge the two into one {duplicate.key.rsplit('.', 1)[-1]}: entry.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Parameter file {str(path)!r} is not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Parameter file {str(path)!r} must hold a mapping of sections (dataset:, model:, ...), "
                          f"not a {type(data).__name__}.")
    bases = data.pop("extends", None)
    if allow_empty is None:
        allow_empty = _is_profile_file(path)
    if not data and not bases and not allow_empty:
        raise ConfigError(f"Parameter file {str(path)!r} holds no settings (it is empty or only has comments), so "
                          f"it would start a full run with the library defaults. Give the settings of the "
                          f"experiment (model:, training:, ...), or `extends:` the file it varies.")
    if bases is not None and not (isinstance(bases, str) or (isinstance(bases, list)
                                                             and all(isinstance(b, str) for b in bases))):
        raise ConfigError(f"Parameter file {str(path)!r}: extends={bases!r} must be a file name or a list of file "
                          f"names (relative to the folder of {path.name}), e.g. extends: baseline.yaml.")
    # Old spellings (model.gbt_*) are translated per file, so an old file that extends a new one still wins.
    data = translate_legacy_keys(data)
    if bases:
        chain = _chain + (path.resolve(),)
        merged: dict[str, Any] = {}
        for base in [bases] if isinstance(bases, str) else bases:
            target = path.parent / base
            if not target.is_file():
                raise ConfigError(
                    f"Parameter file {str(path)!r} extends {base!r}, which resolves to {str(target.resolve())!r} "
                    f"(relative to the folder of {path.name}, {str(path.parent.resolve())!r}, not to the current "
                    f"folder), and that file does not exist. Correct the extends: value, relative to that folder.")
            if target.resolve() in chain:
                cycle = [str(p) for p in chain[chain.index(target.resolve()):]] + [str(target.resolve())]
                raise ConfigError(f"Parameter files extend each other in a cycle: {' extends '.join(cycle)}. "
                                  f"Remove one of these extends: entries.")
            merged = deep_merge(merged, read_yaml(target, chain))
        data = deep_merge(merged, data)
    return data


def parameters_file(name: str | os.PathLike) -> Path:
    """A file named relative to `parameters/`: of the current folder when it has one, else of this checkout."""
    path = Path(name)
    if path.is_absolute():
        return path
    local = Path("parameters") / path
    return local if local.exists() else PARAMETERS_DIR / path


def visible_gpus() -> list[str]:
    """CUDA devices this process may use, as values for CUDA_VISIBLE_DEVICES (ids or UUIDs)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def resolve_profile(profile: str | os.PathLike | None, gpu_visible: bool | None = None) -> Path | None:
    """The profile file for `profile`: None, "auto" (gpu.yaml when a CUDA GPU is visible, else cpu.yaml), a bare
    name such as "cpu" (parameters/profiles/cpu.yaml) or a path."""
    if profile is None or str(profile) == "":
        return None
    text = str(profile)
    if text == "auto":
        if gpu_visible is None:
            gpu_visible = len(visible_gpus()) > 0
        text = "gpu" if gpu_visible else "cpu"
    path = Path(text)
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        path = parameters_file(Path("profiles") / f"{text}.yaml")
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"Profile {str(profile)!r} does not exist (looked for {str(path)!r}). Give a path, 'auto', "
                          f"or one of: {', '.join(known) or '(none found)'}.")
    return path


@dataclass(frozen=True)
class ResolvedLayers:
    """The merged mapping of every layer, and where it came from."""
    data: dict[str, Any]
    profile: str | None  # the profile file's stem, None without one
    sources: tuple[str, ...]  # the layers in order, for display


def _is_profile_file(path: Path) -> bool:
    return path.parent.name == "profiles"


def resolve_layers(*layers: Layer, extends: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                   sections: dict[str, Any] | None = None, profile: str | os.PathLike | None = None,
                   overrides: dict[str, Any] | None = None, gpu_visible: bool | None = None) -> ResolvedLayers:
    """Merge the layers in the order of the module docstring; see there for the rules."""
    merged: dict[str, Any] = {}
    sources: list[str] = []
    last_file_stem = None
    for layer in layers:
        if isinstance(layer, dict):
            merged = deep_merge(merged, translate_legacy_keys(layer))
            sources.append("inline mapping")
            continue
        path = Path(layer)
        # A profile given among the files only adjusts settings; the run keeps the experiment's name.
        if not _is_profile_file(path):
            last_file_stem = path.stem
        merged = deep_merge(merged, read_yaml(path))
        sources.append(str(path))
    if extends:
        for name in [extends] if isinstance(extends, (str, os.PathLike)) else extends:
            base_path = parameters_file(name)
            if not base_path.is_file():
                raise ConfigError(f"extends={str(name)!r} names no parameter file: it is read relative to "
                                  f"parameters/ (of the current folder when it has one, else {str(PARAMETERS_DIR)!r}) "
                                  f"and {str(base_path)!r} does not exist. Give a file of parameters/ or a path.")
            merged = deep_merge(merged, read_yaml(base_path))
            sources.append(f"extends {name}")
    if sections:
        merged = deep_merge(merged, dict(sections))
        sources.append(f"sections ({', '.join(sections)})")
    profile_path = resolve_profile(profile, gpu_visible)
    profile_name = None
    if profile_path is not None:
        merged = deep_merge(merged, read_yaml(profile_path, allow_empty=True))
        profile_name = profile_path.stem
        sources.append(f"profile {profile_path}")
    elif any(not isinstance(layer, dict) and _is_profile_file(Path(layer)) for layer in layers):
        profile_name = next(Path(layer).stem for layer in reversed(layers)
                            if not isinstance(layer, dict) and _is_profile_file(Path(layer)))
    if overrides:
        merged = deep_merge(merged, overrides)
        sources.append("overrides")
    if "name" not in merged and last_file_stem:
        merged["name"] = last_file_stem
    if profile_name is not None:
        merged["profile"] = profile_name
    return ResolvedLayers(data=merged, profile=profile_name, sources=tuple(sources))
