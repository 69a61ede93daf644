"""Every error a user can cause, in one place: each is one line that names the input and says
what is wrong, and every entry point (`maskstream ...`, `run_pipeline.py`, `python -m ...`)
prints it as such, without a traceback.

It sits at the bottom of the import graph (it imports nothing of the project), so the model, the
workers, the pipeline and the command lines all raise and catch the same classes.
`MaskstreamError` is their common base: catching it catches every user mistake and nothing else.
`command` wraps a command line's `main(argv)` so that such an error is printed as one line with
exit status 2, and `on_signals` is how a command answers Ctrl-C and SIGTERM.
"""
import contextlib
import functools
import signal
import sys
import threading


class MaskstreamError(Exception):
    """A problem a user can fix, described in one line naming the input."""


# -- the model and its tooling ------------------------------------------------------------------
class ConfigError(MaskstreamError, ValueError):
    """A configuration mistake, described in one line that names the key."""


class WeightsError(MaskstreamError, ValueError):
    """A weights file that cannot be read or does not fit the configuration."""


class DataError(MaskstreamError, ValueError):
    """A training or evaluation data set that cannot be used."""


class ConversionError(MaskstreamError, ValueError):
    """A foreign weights file (torchvision, Keras) that does not convert."""


class TrackEvalError(MaskstreamError, ValueError):
    """A tracking evaluation that cannot run (TrackEval missing, a bad --drop, an unwritable report)."""


class TrainingInterrupted(MaskstreamError):
    """Training stopped by the user (Ctrl-C) after writing a checkpoint that `--resume` continues from."""


# -- the pipeline --------------------------------------------------------------------------------
class SourceError(MaskstreamError, RuntimeError):
    """A source that cannot be opened or read, described in one line naming it."""


class PipelineError(MaskstreamError, RuntimeError):
    """The run cannot go on; one line for the operator."""


class ProtocolError(MaskstreamError, ValueError):
    """A record or message that does not follow the wire protocol."""


class PublisherError(MaskstreamError, ValueError):
    """A publisher configuration, endpoint or call that cannot work."""


class ConsumerError(MaskstreamError, ValueError):
    """An endpoint or key directory the consumer cannot use."""


class CurveKeyError(MaskstreamError, ValueError):
    """A CURVE key directory that is missing, incomplete or would be overwritten."""


class SinkError(MaskstreamError, ValueError):
    """An output file (JSON lines, COCO results, overlay video) that cannot be written."""


class ViewError(MaskstreamError, RuntimeError):
    """The live view cannot start: its port is taken or the endpoint cannot be used."""


def command(main):
    """Decorate a command's `main(argv) -> int`: a MaskstreamError it raises is printed on stderr as
    `error: <the one line>` and the command returns 2; any other exception is a bug and keeps its
    traceback."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except MaskstreamError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return run


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; what docker stop, systemd and schedulers send


@contextlib.contextmanager
def on_signals(handler, signums: tuple = STOP_SIGNALS):
    """Within the block `handler(signum, frame)` answers these signals; the previous handlers come
    back after it. Signals land on the main thread only: on any other thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
