"""Training Mask R-CNN from the command line.

    python -m models.training.train --config configs/default_model.yaml --data DIR_OR_SPEC --out DIR
        [--steps N] [--batch-size N] [--learning-rate LR] [--set section.key=value ...]
        [--resume] [--init WEIGHTS] [--tensorboard] [--no-progress] [--verbose]

Every batch is resized (short side min_size x a random scale jitter), flipped at random and
padded into one fixed canvas, so the step is compiled once. `--init` starts from any weights
file of the same backbone (for example torchvision's COCO weights converted): parameters whose
shape differs, the class-specific layers when the number of classes changes, start afresh.
Ctrl-C (or SIGTERM) writes a checkpoint before it stops; `--resume` continues from
DIR/checkpoint.npz where the interrupted run was (to the last bit with `--set
train.deterministic=true`).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from ..config import load_config
from ..errors import TrainingInterrupted, command, on_signals
from .trainer import train_model


def overrides(args: argparse.Namespace) -> list[str]:
    """--steps, --batch-size and --learning-rate as config overrides, then every --set in order."""
    named = [("train.steps", args.steps), ("train.batch_size", args.batch_size),
             ("train.learning_rate", args.learning_rate)]
    return [f"{key}={value}" for key, value in named if value is not None] + args.set


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskstream train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="model YAML (with a train: section)")
    parser.add_argument("--data", required=True, help="data directory (annotations.json + images/) or coco:ANN:IMGS")
    parser.add_argument("--out", required=True, type=Path, help="output directory: model.npz, checkpoint.npz")
    parser.add_argument("--steps", type=int, help="override train.steps")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--learning-rate", type=float, help="override train.learning_rate (the peak, after warm-up)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any model config value, e.g. --set input.min_size=320; repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    parser.add_argument("--init", help="start from these weights (non-fitting layers start afresh)")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUT/tensorboard")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    # SIGTERM (docker stop, systemd, a cluster's pre-emption) stops it as Ctrl-C does: a checkpoint first
    try:
        with on_signals(signal.default_int_handler):
            config = load_config(args.config, overrides(args))
            path = train_model(config, args.data, args.out, args.resume, args.init, args.tensorboard,
                               not args.no_progress)
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return 130
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
