"""Helpers shared by commands: printing run summaries, flags derived from stage configs."""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADLINE = {"inputs", "pairs_in", "candidates", "multi_turn", "single_turn", "templates_only", "final_sets"}


def add_run_options(p: argparse.ArgumentParser, executor: str = "ray") -> None:
    """--executor, --address and --json: how a stage command runs and prints."""
    p.add_argument("--executor", choices=["ray", "local"], default=executor,
                   help=f"ray (a local Ray, or --address) or local (in-process); default {executor}")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")


def print_run(run: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(run, indent=1))
        return
    print(f"run {run['name']!r} -> {run['out']}  ({run['seconds']} s)")
    for s in run["stages"]:
        all_counts = s.get("counts", {})
        # The headline counts: inputs and the tables a stage wrote; the rest stay in _run.json.
        main = {k: v for k, v in all_counts.items() if k in HEADLINE or k in run.get("tables", {})}
        counts = ", ".join(f"{k}={v}" for k, v in sorted(main.items()))
        if len(main) < len(all_counts):
            counts += f"  (+{len(all_counts) - len(main)} more in _run.json)"
        state = "skipped (complete)" if s.get("skipped") else f"{s.get('seconds', 0)} s"
        print(f"  {s['name']:<14} {state:<20} {counts}")
        if s.get("mode"):
            print(f"  {'':<14} {s['mode']}")


# --- options that mirror a stage config -------------------------------------------------------
# A command that builds a stage config declares its flags with `config_option(parser, Config,
# "field.path", help)`: the flag's type, choices and default come from the pydantic field, so a
# default lives in the config alone; `config_values(args, Config)` collects them back as the
# (nested) keyword arguments of the config.

_OPTIONS = "_config_options"  # namespace attribute: {config class: [ConfigOption, ...]}


@dataclass(frozen=True)
class ConfigOption:
    dest: str
    path: str  # dotted field path in the config
    own_default: bool  # True where the command states a default of its own (said why where it is declared)


def _field_at(model: type[BaseModel], path: str) -> tuple[Any, Any, str | None]:
    """(annotation, default value, description) of a dotted field path, e.g. `guard.max_set_size`:
    a nested default is read from the outer field's default instance (`model.name` of EmbedConfig)."""
    cls: Any = model
    value: Any = None
    for part in path.split("."):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            raise KeyError(f"{model.__name__} has no field {path!r}")
        info = cls.model_fields[part]
        value = getattr(value, part) if isinstance(value, BaseModel) else info.get_default(call_default_factory=True)
        value = None if value is PydanticUndefined else value
        cls = type(value) if isinstance(value, BaseModel) else _plain(info.annotation)
    return info.annotation, value, info.description


def _plain(annotation: Any) -> Any:
    """`X | None` -> X; anything else unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def config_option(p: argparse.ArgumentParser, model: type[BaseModel], path: str, help: str | None = None,
                  *flags: str, default: Any = PydanticUndefined, **argparse_kw: Any) -> argparse.Action:
    """Add the flag for config field `path` (default flag: --last-part-with-dashes). Type, choices and
    default come from the field; `argparse_kw` adds to them (e.g. `type=json.loads` for a mapping);
    `default` is for the rare command whose default differs from the config's on purpose."""
    annotation, config_default, description = _field_at(model, path)
    own_default = default is not PydanticUndefined
    default = default if own_default else config_default
    leaf = path.rsplit(".", 1)[-1]
    flags = flags or (f"--{leaf.replace('_', '-')}",)
    dest = argparse_kw.pop("dest", None) or next(
        (f for f in flags if f.startswith("--")), flags[0]).lstrip("-").replace("-", "_")
    text = help or description or ""
    kind = _plain(annotation)
    kw: dict[str, Any] = {"dest": dest, "default": default}
    if "type" in argparse_kw or "action" in argparse_kw:
        pass  # the command says how to parse it
    elif kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(kind) is typing.Literal:
        values = typing.get_args(kind)
        spelled = {str(v).lower() if isinstance(v, bool) else str(v): v for v in values}  # True -> "true"
        kw.update(choices=values, type=lambda s: spelled.get(s, s), metavar="{" + ",".join(spelled) + "}")
    elif kind in (int, float, str):
        kw["type"] = kind
    else:
        raise TypeError(f"{model.__name__}.{path}: no command-line form for {annotation!r}")
    if default is not None and "%(default)" not in text:
        text = f"{text} (default: %(default)s)" if text else "default: %(default)s"
    action = p.add_argument(*flags, help=text, **{**kw, **argparse_kw})
    registered = dict(p.get_default(_OPTIONS) or {})  # one list per config class, kept on the namespace
    registered[model] = [*registered.get(model, []), ConfigOption(dest, path, own_default)]
    p.set_defaults(**{_OPTIONS: registered})
    return action


def config_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The registered flags of `model` as nested keyword arguments (`guard.x` -> {"guard": {"x": ...}})."""
    out: dict[str, Any] = {}
    for opt in config_options(args).get(model, []):
        *outer, leaf = opt.path.split(".")
        node = out
        for part in outer:
            node = node.setdefault(part, {})
        node[leaf] = getattr(args, opt.dest)
    return out


def config_options(args_or_parser: argparse.Namespace | argparse.ArgumentParser) -> dict[type, list[ConfigOption]]:
    """The config-derived flags registered on a parser (or present in its parsed namespace)."""
    if isinstance(args_or_parser, argparse.ArgumentParser):
        return args_or_parser.get_default(_OPTIONS) or {}
    return getattr(args_or_parser, _OPTIONS, None) or {}


def config_default(model: type[BaseModel], path: str) -> Any:
    """The config's own default of a dotted field path."""
    return _field_at(model, path)[1]
