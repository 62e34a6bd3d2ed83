"""Every command's --help ends its description with one example a user can copy."""

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

COMMANDS = [info.name or info.callback.__name__ for info in app.registered_commands]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_one_example(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    examples = [line.strip() for line in result.output.splitlines() if line.strip().startswith("Example")]
    assert len(examples) == 1 and f": pipeline {command} " in examples[0], result.output
