"""Shared CLI helpers: options generated from the settings dataclasses, config files, output."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from loradex.core.errors import ConfigError, suggest
from loradex.core.spec import LoraSettings, RuntimeSettings, TrainSettings, field_help

LORA_FIELDS = ("rank", "alpha", "dropout", "targets", "tokens")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainSettings))
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeSettings))
RUN_KEYS = ("data", "backbone", "revision", "name", "project", "run_name", "head", "init")
CONFIG_KEYS = RUN_KEYS + LORA_FIELDS + TRAIN_FIELDS + RUNTIME_FIELDS
TEXT_KEYS = ("data", "backbone", "revision", "name", "project", "run_name", "init", "scheduler", "mixed_precision",
             "cache")


def _click_type(cls: type, name: str) -> Any:
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint
    if name in ("targets", "tokens"):
        return str
    return {int: int, float: float, str: str, bool: bool}.get(base, str)


def settings_options(func: Callable) -> Callable:
    """Add ``--rank --alpha ... --epochs --batch-size --lr ...`` with help from the dataclasses."""
    for cls, names in ((RuntimeSettings, RUNTIME_FIELDS[::-1]), (TrainSettings, TRAIN_FIELDS[::-1]),
                       (LoraSettings, LORA_FIELDS[::-1])):
        for name in names:
            help_text = field_help(cls, name)
            if name == "targets":
                help_text += " Comma list: q,k,v,o, attn.q, mlp.in, mlp.out, attn, mlp, all; conv.pw, conv on CNNs."
            if name == "tokens":
                help_text += " Comma list, e.g. '<loc_*>,<OD>'."
            flag = name.replace("_", "-")
            if _click_type(cls, name) is bool:
                func = click.option(f"--{flag}/--no-{flag}", name, default=None, help=help_text)(func)
                continue
            func = click.option(f"--{flag}", name, type=_click_type(cls, name), default=None, help=help_text)(func)
    return func


def read_config(path: Path) -> dict[str, Any]:
    """A YAML config file of train options; errors name the file and the key."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    config: dict[str, Any] = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm not in CONFIG_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}.{suggest(norm, CONFIG_KEYS)}")
        if norm == "head" and not isinstance(value, dict):
            raise ConfigError(f"{path}: key 'head' must be a mapping (e.g. pooling: mean)")
        if norm in TEXT_KEYS and value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: key {key!r} must be text, got {type(value).__name__} {value!r:.40}")
        config[norm] = value
    return config


def split_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(LoRA, training, runtime overrides) from a flat mapping; None values are dropped."""
    return tuple({k: values[k] for k in fields if values.get(k) is not None}  # type: ignore[return-value]
                 for fields in (LORA_FIELDS, TRAIN_FIELDS, RUNTIME_FIELDS))


def registry_home() -> str | None:
    """The ``--home`` given to the root command (None: default location)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx else None
    return (obj or {}).get("home")


def open_registry():
    """The registry the command line points at."""
    from loradex.registry.store.registry import Registry

    return Registry.open(registry_home())


def print_json(data: Any) -> None:
    """Data to stdout as JSON."""
    click.echo(json.dumps(data, indent=2, default=str))


def stderr_console():
    """A rich console on stderr for progress and logs."""
    from rich.console import Console

    return Console(file=sys.stderr)


def check_listen_address(host: str, port: int | None) -> None:
    """Refuse, in one line naming it, a ``--host`` that does not resolve or a ``--port`` that cannot be bound.

    Checked before anything loads, so a server does not spend a minute loading a base to then
    fail on its address (and blame the port for a bad host).
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"--host {host!r} cannot be resolved ({reason}); use an address such as 127.0.0.1") \
            from None
    if not port:
        return
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"--port {port} on {host} cannot be used ({exc.strerror or exc}); another program may "
                              "hold it: choose another --port") from None
