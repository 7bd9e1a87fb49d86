"""The training settings are declared once (StageSettings) and every one of them reaches every training command.

These tests parse command lines only: nothing trains.
"""
import ast
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

import cdism_fast
from cdism_fast.cli import build_parser
from cdism_fast.cli.options import (
    SETTING_ALIASES,
    option_name,
    overrides_from_args,
    settings_from_args,
)
from cdism_fast.training.engine import LoopSettings, TrainConfig
from cdism_fast.training.presets import WORKFLOWS
from cdism_fast.training.stages import StageSettings

#: The required options of each training command, and the preset stage its settings start from.
COMMANDS = {
    "train": (["--out", "o"], "teacher"),
    "prune": (["--teacher", "t.pt", "--out", "o"], "prune"),
    "distill": (["--student", "edsr_mini", "--out", "o"], "distill"),
    "run": ([], "distill"),
}
SETTINGS = [f.name for f in fields(StageSettings)]


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def _other_value(field, base: StageSettings):
    """A command-line text for ``field`` and the value it must give, never ``base``'s value."""
    current = getattr(base, field.name)
    annotation = typing.get_type_hints(StageSettings)[field.name]
    if field.metadata.get("choices"):
        value = next(c for c in field.metadata["choices"] if c != current)
        return [option_name(field.name), value], value
    if annotation in (bool, typing.Optional[bool]):
        value = not current  # None (the automatic choice) becomes True
        return [option_name(field.name) if value else "--no-" + field.name.replace("_", "-")], value
    if annotation is int:
        value = current + 3
        return [option_name(field.name), str(value)], value
    if annotation in (float, typing.Optional[float]):
        value = 0.25 if current != 0.25 else 0.125
        return [option_name(field.name), str(value)], value
    value = (3, 5) if tuple(current) != (3, 5) else (7,)
    return [option_name(field.name), ",".join(map(str, value))], value


def test_the_settings_are_the_loop_settings_and_the_stage_schedule():
    loop = [f.name for f in fields(LoopSettings)]
    assert [f.name for f in fields(TrainConfig)] == [*loop, "description"]
    assert SETTINGS[:len(loop)] == loop
    assert {"grad_clip", "num_workers", "ema_decay", "patch_size", "lr", "milestones", "gamma"} <= set(SETTINGS)
    for f in fields(StageSettings):
        assert f.metadata.get("help"), f"{f.name} has no help text"
    # Only iterations has no default; every preset sets it.
    assert [f.name for f in fields(StageSettings) if f.default is MISSING] == ["iterations"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_reaches_every_command(parser, command, name):
    required, stage = COMMANDS[command]
    field = next(f for f in fields(StageSettings) if f.name == name)
    base = getattr(WORKFLOWS["demo"], stage)
    words, expected = _other_value(field, base)
    args = parser.parse_args([command, *required, "--preset", "demo", *words])
    assert getattr(args, name) == expected
    assert overrides_from_args(args) == {name: expected}
    settings = settings_from_args(args, base)
    assert getattr(settings, name) == expected != getattr(base, name)
    # The engine receives it too (pruning never keeps an EMA).
    if name in {f.name for f in fields(LoopSettings)} and name != "ema_decay":
        assert getattr(settings.train_config("test"), name) == expected


@pytest.mark.parametrize("command", COMMANDS)
def test_nothing_given_keeps_the_preset(parser, command):
    required, stage = COMMANDS[command]
    args = parser.parse_args([command, *required, "--preset", "demo"])
    assert overrides_from_args(args) == {}
    base = getattr(WORKFLOWS["demo"], stage)
    assert settings_from_args(args, base) == base


@pytest.mark.parametrize("command", COMMANDS)
def test_grad_clip_from_the_command_line(parser, command):
    required, stage = COMMANDS[command]
    args = parser.parse_args([command, *required, "--grad-clip", "0.5"])
    settings = settings_from_args(args, getattr(WORKFLOWS[args.preset], stage))
    assert settings.grad_clip == 0.5
    assert settings.train_config("test").grad_clip == 0.5


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("old, new, text, value", [
    ("--workers", "--num-workers", "3", 3),
    ("--ema", "--ema-decay", "0.9", 0.9),
])
def test_old_spellings_are_aliases(parser, command, old, new, text, value):
    required, _ = COMMANDS[command]
    by_old = overrides_from_args(parser.parse_args([command, *required, old, text]))
    by_new = overrides_from_args(parser.parse_args([command, *required, new, text]))
    assert by_old == by_new == {new[2:].replace("-", "_"): value}
    # A real option string, not only an abbreviation argparse accepts (--ema is a prefix of --ema-decay).
    assert old in _option_strings(parser, command)


def _option_strings(parser, command) -> set:
    (commands,) = [action for action in parser._actions if hasattr(action, "choices") and action.choices
                   and command in action.choices]
    return {s for action in commands.choices[command]._actions for s in action.option_strings}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setting_is_an_option_under_its_own_name(parser, command):
    options = _option_strings(parser, command)
    for name in SETTINGS:
        assert option_name(name) in options


def test_every_alias_names_a_setting():
    from cdism_fast.training.stages import STAGE_OPTIONS

    assert set(SETTING_ALIASES) <= set(SETTINGS) | {f.name for cls in STAGE_OPTIONS.values() for f in fields(cls)}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_units_and_the_presets_defaults(parser, command, capsys):
    required, _ = COMMANDS[command]
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in SETTINGS:
        assert option_name(name) in text
    assert "--workers NUM_WORKERS" in text and "--ema EMA_DECAY" in text
    assert "in LR pixels" in text and "in iterations" in text
    assert "Default: the preset's (" in text


def test_a_setting_missing_from_a_command_is_an_error(parser):
    args = parser.parse_args(["train", "--out", "o"])
    del args.grad_clip
    with pytest.raises(KeyError, match="grad_clip"):
        overrides_from_args(args)


def test_training_never_imports_the_command_line():
    root = Path(cdism_fast.__file__).parent / "training"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "cli" not in module.split("."), f"{path.name} imports {module}"
            elif isinstance(node, ast.Import):
                assert not any(".cli" in alias.name for alias in node.names), f"{path.name} imports the CLI"
