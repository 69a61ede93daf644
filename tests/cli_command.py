"""A stand-in sub-command for tests/test_cli.py: what `maskstream` hands a command, seen from inside."""
import argparse

from models.errors import ConfigError, command


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="echo the arguments")  # no prog: it comes from the dispatcher
    parser.add_argument("words", nargs="*")
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args(argv)
    if args.fail:
        raise ConfigError("example.yaml: a mistake the command did not catch")
    print(parser.prog, "|", " ".join(args.words))
    return 0
