"""
Reading a configuration file: YAML (so JSON too) into a
:class:`~kongacme.config.daemon.DaemonConfig`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import attrs
import yaml

from kongacme.config.daemon import DAEMON, DaemonConfig
from kongacme.config.fields import INVALID, Context
from kongacme.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """
    A safe loader that refuses duplicate keys (PyYAML keeps the last one
    silently, which hides a mistake).
    """


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_SECTIONS = "a mapping of sections (listen:, routes:, acme: ...)"


def parse_config(data: object, base_dir: str) -> DaemonConfig:
    """
    Validate an already-decoded configuration.

    :param data: the decoded document (``None``, as from an empty file, is
        taken as an empty mapping: every default).
    :param base_dir: directory that relative paths are resolved against.
    :return: the configuration, every path in it absolute.
    :raises ConfigError: listing every problem found, each with its field
        path.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([("", f"the configuration must be {_SECTIONS}, not {_a(data)}")])
    ctx = Context(os.path.abspath(base_dir))
    config = DAEMON.parse(data, ctx, "")
    if ctx.problems or config is INVALID:
        raise ConfigError(ctx.problems)
    return attrs.evolve(config, warnings=tuple(ctx.warnings))


def load_config(path: str) -> DaemonConfig:
    """
    Read and validate a configuration file.

    :param path: a YAML (or JSON) file. Relative paths inside it are resolved
        against the directory it is in.
    :return: the configuration.
    :raises ConfigError: when the file cannot be read or parsed, or listing
        every problem in it.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError([("", f"{path}: configuration file not found")]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([("", f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")]) from None
    except OSError as e:
        raise ConfigError([("", f"{path}: cannot read the configuration file: {e.strerror or e}")]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        raise ConfigError([("", _yaml_message(path, e))]) from None
    except yaml.YAMLError as e:
        raise ConfigError([("", f"{path}: invalid YAML: {e}")]) from None
    if data is None:
        # An empty or comments-only file is far more likely a truncated write
        # (an editor or deployment tool racing ``systemctl reload``) than a
        # wish for every default: applied on SIGHUP it would move every
        # listener and drop the acme section. ``{}`` asks for the defaults.
        raise ConfigError([("", f"{path}: configuration file is empty (write {{}} for every default)")])
    if not isinstance(data, Mapping):
        raise ConfigError([("", f"{path}: the top level must be {_SECTIONS}, not {_a(data)}")])
    return parse_config(data, os.path.dirname(os.path.abspath(path)))


def _yaml_message(path: str, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
    what = "; ".join(part for part in (error.context, error.problem) if part)
    return f"{where}: invalid YAML: {what}"


def _a(value: object) -> str:
    name = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return name.get(type(value), f"a {type(value).__name__}")
