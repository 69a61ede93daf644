"""``maskstream``: the package's command line, one sub-command per tool.

    maskstream run [--source URI ...] [--out DIR]     # the pipeline (python run_pipeline.py is the same)
    maskstream consume tcp://127.0.0.1:5555            # a line per frame published
    maskstream COMMAND --help                          # that command's own options
    maskstream --version

Each sub-command is the `main(argv)` of its module, imported only when it runs: `maskstream
--help` stays instant, and one command's heavy imports (TensorFlow, Ray) stay out of the others.
Adding a command is one line in `COMMANDS`. Each command's main is decorated with
`models.errors.command`, so a user's mistake (a `MaskstreamError`) is one line, exit code 2.
"""
import argparse
import importlib
import sys
from importlib import metadata

# name: (the module whose main(argv) runs it, what it does in one line)
COMMANDS = {
    "run": ("pipeline.run", "run the pipeline: sources in, instance masks out over ZeroMQ and to files"),
    "consume": ("pipeline.consume", "subscribe to a publisher: print, record or render its frames"),
    "keys": ("pipeline.keys", "make a CURVE key pair for an encrypted publisher or one of its consumers"),
    "view": ("pipeline.view", "watch every stream live in a browser: masks, boxes, labels, frames/s, latency"),
    "convert": ("models.tools.convert", "convert Mask R-CNN weights (torchvision, the seed's Keras .h5) into the project's .npz"),
    "train": ("models.training.train", "train or fine-tune a model on generated scenes or COCO-format data"),
    "evaluate": ("models.tools.evaluate", "COCO box and mask AP of a model on a data set"),
    "scenes": ("models.data.scenes", "write a data set of generated street scenes"),
    "track-eval": ("pipeline.track_eval", "HOTA, IDF1, MOTA of the model and the tracker on generated sequences (TrackEval)"),
}


def package_version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("maskstream")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="maskstream", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Streaming video instance segmentation: Mask R-CNN on Ray workers, masks over ZeroMQ.",
        epilog=f"commands:\n{listing}\n\n'maskstream COMMAND --help' shows a command's own options.")
    parser.add_argument("--version", action="version", version=f"maskstream {package_version()}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, metavar="...", help="the command's own arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    module_name = COMMANDS[args.command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # the command exists but lacks a dependency: say so with the traceback
        print(f"error: maskstream {args.command}: its module {module_name} is not in this installation",
              file=sys.stderr)
        return 2
    program = sys.argv[0]
    sys.argv[0] = f"maskstream {args.command}"  # the prog of a command parser that does not name one
    try:
        return module.main(args.arguments) or 0
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    sys.exit(main())
