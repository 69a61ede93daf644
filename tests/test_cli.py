"""`maskstream`: the package's command line lists, versions and dispatches its sub-commands."""
import importlib
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from pipeline import cli

REPO = Path(__file__).resolve().parent.parent
OURS = ("run", "consume", "keys", "track-eval")  # the pipeline's; the others are the models' tools


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """maskstream ARGV in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as done:  # argparse's --help, --version and usage errors
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_installed_script_is_this_main():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["maskstream"].split(":")
    assert getattr(importlib.import_module(module), function) is cli.main


def test_help_lists_every_command_with_its_line():
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: maskstream ")
    listed = {line.split()[0]: line.split(None, 1)[1] for line in done.stdout.split("commands:\n")[1].splitlines()
              if line.startswith("  ")}
    assert listed == {name: summary for name, (_, summary) in cli.COMMANDS.items()}
    assert set(listed) == {"run", "consume", "keys", "view", "convert", "train", "evaluate", "scenes", "track-eval"}


def test_version_is_the_package_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert (code, out) == (0, f"maskstream {metadata.version('maskstream')}\n")


@pytest.mark.parametrize("command", OURS)
def test_each_pipeline_command_help_is_its_own_parser_named_for_it(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: maskstream {command} ")
    module = importlib.import_module(cli.COMMANDS[command][0])
    assert callable(module.main)


@pytest.mark.parametrize("command", sorted(set(cli.COMMANDS) - set(OURS)))
def test_each_model_tool_is_dispatched_or_said_to_be_missing(capsys, command):
    """The model tools' modules (models/tools, models/training, models/data) come with the models'
    reorganisation: until they exist, the command says so in one line; then their own parser
    answers, named for the command (a parser without its own prog gets it from the dispatcher)."""
    code, out, err = run_cli(capsys, command, "--help")
    try:
        importlib.import_module(cli.COMMANDS[command][0])
    except ModuleNotFoundError:
        assert (code, out) == (2, "")
        assert err == f"error: maskstream {command}: its module {cli.COMMANDS[command][0]} is not in this installation\n"
    else:
        assert code == 0 and out.startswith(f"usage: maskstream {command} ")


def test_keys_runs_through_the_dispatcher(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "keys", str(tmp_path / "server"))
    assert code == 0 and (tmp_path / "server" / "server.key_secret").is_file()
    assert out.startswith(f"wrote {tmp_path / 'server' / 'server.key'} and ")
    code, _, err = run_cli(capsys, "keys", str(tmp_path / "server"))  # never overwrites: one line, exit 2
    assert code == 2 and err.startswith("error: curve keys ") and err.count("\n") == 1


def test_a_command_is_one_line_to_add_and_gets_arguments_name_and_error_handling(capsys, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "echo", ("tests.cli_command", "say the words"))
    assert "  echo " in cli.build_parser().format_help()
    code, out, _ = run_cli(capsys, "echo", "a", "--", "-b")
    assert (code, out) == (0, "maskstream echo | a -b\n")  # its parser named for it, arguments as given
    code, out, err = run_cli(capsys, "echo", "--fail")
    assert (code, out, err) == (2, "", "error: example.yaml: a mistake the command did not catch\n")


def test_an_unknown_command_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "trian")
    assert code == 2 and "invalid choice: 'trian'" in err
