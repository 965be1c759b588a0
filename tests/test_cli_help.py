"""Every command's --help is readable at 80 columns: nothing cut with "...", nothing wider."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from tinyscale.cli import app

runner = CliRunner()
COMMAND = typer.main.get_command(app)
COMMAND_NAMES = sorted(COMMAND.commands)  # type: ignore[attr-defined]


def _help(args: list[str]) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def _cut(text: str) -> bool:
    """Anything shortened with an ellipsis ("COMMAND [ARGS]..." in the usage line is click's own)."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("Usage:"))
    return "..." in body or "…" in body


def _option_names(command) -> list[str]:
    return [name for param in command.params for name in (*param.opts, *param.secondary_opts) if name.startswith("-")]


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_command_help_shows_every_option_and_default_in_full_at_80_columns(name):
    command = COMMAND.commands[name]  # type: ignore[attr-defined]
    text = _help([name])
    assert not _cut(text), text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    flat = " ".join(text.split())  # defaults may wrap onto the next line
    for option in _option_names(command):
        assert option in text, f"{option} missing from `{name} --help`"
    for param in command.params:
        default = getattr(param.default, "value", param.default)
        if getattr(param, "is_flag", False) or not isinstance(default, (str, int, float)) or default == "":
            continue
        if param.show_default is not False:
            assert str(default) in flat, f"{name} --{param.name}: default {default!r} missing"


def test_root_help_lists_every_command_with_its_whole_summary():
    text = _help([])
    flat = " ".join(text.split()).replace("- ", "-")  # click may break a line after a hyphen
    assert not _cut(text), text
    for name in COMMAND_NAMES:
        summary = (COMMAND.commands[name].help or "").strip().splitlines()[0]  # type: ignore[attr-defined]
        assert f"{name} {summary}" in flat, f"`{name}`'s summary is cut in --help"


def test_bare_tinyscale_prints_the_help_and_succeeds(monkeypatch, capsys):
    from tinyscale.cli import main

    monkeypatch.setattr("sys.argv", ["tinyscale"])
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 0
    assert captured.out.startswith("Usage: ") and "Commands:" in captured.out, captured
    assert captured.err == ""
