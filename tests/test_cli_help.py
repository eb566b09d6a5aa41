"""Every flag of every subcommand says what it does: `--help` is the command line's manual.

A config dataclass's settings carry their own sentence (`errors.setting`), which is both the
field's documentation and its flag's help, so the two cannot drift."""

import argparse
import dataclasses
import re

import pytest

from retroplan.cli import build_parser, main

# a help that only states its default (what `--n-layer N_LAYER (default 0)` used to say)
ONLY_DEFAULT = re.compile(r"^\s*(\(default[^)]*\))?\s*$")


def _subparsers(parser, path=("retroplan",)):
    """(command path, parser) for the parser and every subcommand below it, nested ones too."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, path + (name,))


def _undocumented(parser) -> list[str]:
    found = []
    for path, p in _subparsers(parser):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            if action.help is None or ONLY_DEFAULT.match(action.help):
                found.append(f"{' '.join(path)} {name}: {action.help!r}")
    return found


def test_every_flag_of_every_subcommand_says_what_it_does():
    parser = build_parser()
    commands = [" ".join(path) for path, _ in _subparsers(parser)]
    # the walk reaches the nested subcommands (a task under generate, a figure under plot)
    assert "retroplan generate countdown" in commands and "retroplan plot trajectories" in commands
    for command in ("train", "eval", "eval-hf", "rl", "run", "probe", "export", "export-model",
                    "sweep-tip", "inspect", "show-trace", "merge-shards", "example", "list"):
        assert f"retroplan {command}" in commands
    assert _undocumented(parser) == []
    for _, p in _subparsers(parser):
        p.format_help()  # renders: a stray % in a help text would raise here


def test_the_check_catches_a_flag_that_only_states_its_default():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-layer", type=int, help="(default 0)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    assert _undocumented(parser) == ["retroplan --n-layer: '(default 0)'", "retroplan --limit: None"]


def _config_classes():
    from retroplan.envs import TASKS
    from retroplan.eval import EvalConfig
    from retroplan.eval_hf import HFEvalConfig
    from retroplan.probe import ProbeConfig
    from retroplan.rl import RLConfig
    from retroplan.traces import GRAMMARS
    from retroplan.train import TrainConfig

    classes = [TrainConfig, EvalConfig, HFEvalConfig, RLConfig, ProbeConfig]
    classes += [task.Config for task in TASKS.values()] + [GRAMMARS[name].Options for name in TASKS]
    return classes


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_setting_carries_its_sentence(cls):
    """Settings that are no flag (train's keep_steps in a TOML file) are documented too."""
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__qualname__}.{f.name} has no help"


def test_help_says_what_zero_means_and_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--n-layer N_LAYER transformer blocks (0: the preset's) (default 0)" in text
    assert "(0: the suite's longest row)" in text
    assert "drop (not trained on) or cut" in text
    assert "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16" in text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "evaluate the first N instances of the split (0: every instance) (default 0)" in text
    assert "plain, model-goal, given-goal" in text
