"""Command-line defaults come from the stage configs: a flag that mirrors a config field states no
default of its own (config_option derives it), so the two cannot drift apart."""

from __future__ import annotations

import argparse

import pytest

from acedata.cli import build_parser
from acedata.commands._common import config_default, config_options, config_values

# The only flags whose default differs from the config's on purpose (each says why where it is declared).
OWN_DEFAULTS = {("encode-cache", "resources.concurrency")}

# Minimal argv per command, to build the config the command would build with every flag left out.
MINIMAL = {
    "pair": ["--embeddings", "E", "--out", "O"],
    "cluster": ["--embeddings", "E", "--out", "O"],
    "embed": ["IMAGES", "--out", "O"],
    "ingest": ["SRC", "--out", "O"],
    "encode-cache": ["CFG", "--data", "D", "--out", "O"],
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


COMMANDS = _commands()
MIRRORING = {name: p for name, p in COMMANDS.items() if config_options(p)}


def test_the_commands_that_build_stage_configs_derive_their_flags():
    assert set(MINIMAL) <= set(MIRRORING), sorted(MIRRORING)


@pytest.mark.parametrize("name", sorted(MIRRORING))
def test_flag_defaults_equal_config_defaults(name):
    parser = MIRRORING[name]
    actions = {a.dest: a for a in parser._actions}
    own = set()
    for model, options in config_options(parser).items():
        for opt in options:
            if opt.own_default:
                own.add((name, opt.path))
                continue
            assert actions[opt.dest].default == config_default(model, opt.path), f"{name} --{opt.dest}"
    assert own == {o for o in OWN_DEFAULTS if o[0] == name}


@pytest.mark.parametrize("name", sorted(MIRRORING))
def test_no_hand_written_default_for_a_config_field(name):
    # A flag named like a top-level field of the config, added with plain add_argument and a default,
    # would repeat the config's default by hand.
    parser = MIRRORING[name]
    registered = {o.dest for opts in config_options(parser).values() for o in opts}
    fields = {f for model in config_options(parser) for f in model.model_fields}
    hand = [a.dest for a in parser._actions
            if a.dest in fields and a.dest not in registered and a.default not in (None, argparse.SUPPRESS)]
    assert hand == []


def _at(dumped: dict, path: str):
    for part in path.split("."):
        dumped = dumped[part]
    return dumped


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_a_command_with_no_flags_builds_the_default_config(name):
    args = COMMANDS[name].parse_args(MINIMAL[name])
    for model, options in config_options(args).items():
        required = {"sources": ["x"]} if "sources" in model.model_fields else {}  # ingest's one required field
        built = model(**required, **config_values(args, model)).model_dump()
        default = model(**required).model_dump()
        for opt in options:
            if not opt.own_default:
                assert _at(built, opt.path) == _at(default, opt.path), f"{name}: {opt.path}"


def test_a_flag_still_overrides_and_reaches_the_config():
    from acedata.stages.pair import PairConfig

    args = COMMANDS["pair"].parse_args(MINIMAL["pair"] + ["--tau-low", "0.7", "--max-set-size", "9",
                                                          "--both-directions", "--duplicate-sim", "0.99"])
    cfg = PairConfig(**config_values(args, PairConfig))
    assert (cfg.tau_low, cfg.guard.max_set_size, cfg.both_directions, cfg.filters.duplicate_sim) == \
        (0.7, 9, True, 0.99)
    args = COMMANDS["cluster"].parse_args(MINIMAL["cluster"] + ["--gpu", "false"])
    from acedata.stages.cluster import ClusterConfig

    assert ClusterConfig(**config_values(args, ClusterConfig)).gpu is False
