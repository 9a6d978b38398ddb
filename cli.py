"""The command line and the process beneath every script: BadInput (a user's mistake: one line on stderr, exit code
2), the Parser and its number types, signals (a stop at the next step, exit code 143).

    @cli.command
    def main(argv=None): args = cli.Parser(...).parse_args(argv) ...
"""

import argparse
import functools
import math
import signal
import sys

import torch


class BadInput(Exception):
    """A user error (a bad flag, mask, file or dataset): one line on stderr, exit code 2 (`command`)."""

    code = 2


class Diverged(BadInput):
    """A training whose loss became non-finite, its --lr too high for it: one line, exit code 3."""

    code = 3


class Parser(argparse.ArgumentParser):
    """Every script's parser: a bad flag is a BadInput, and --help shows each flag's default."""

    def error(self, message):
        raise BadInput(message)

    def add_argument(self, *flags, **options):
        shown = options.get("default") not in (None, [], argparse.SUPPRESS)  # not a switch's, nor --help's (0 is shown)
        if shown and "default" not in options.get("help", ""):
            options["help"] = (options.get("help", "") + " (default: %(default)s)").lstrip()
        return super().add_argument(*flags, **options)


def number(kind, low=-math.inf, high=math.inf, above=False, below=False):
    """An argparse type: a finite `kind` (int, float) in [low, high], or (low, high] with `above`, [low, high) with
    `below`; anything else is refused in one line that gives the range."""

    def parse(text):
        span = f"{'(' if above else '['}{low:g}, {high:g}{')' if below or high == math.inf else ']'}"
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} in {span}") from None
        too_low, too_high = (value <= low if above else value < low), (value >= high if below else value > high)
        if too_low or too_high or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be in {span}, got {text}")
        return value

    return parse


def device(name=None):
    """--device, by default cuda when available, else cpu; refused unless this machine can use it."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=name)
    except (RuntimeError, AssertionError) as e:  # AssertionError: a torch built without CUDA
        reason = str(e).splitlines()[0]
        raise BadInput(f"--device {name}: not usable here ({reason}); use cpu, cuda or cuda:N") from None
    return name


STOP = []  # the signals received (SIGTERM: a scheduler's preemption; SIGINT: Ctrl-C): work stops at its next step


class Stopped(Exception):
    """Work stopped by a signal, what it had done saved where it can be: `command` prints why and exits 143."""


def note_signal(signum, frame):
    if STOP:  # the second signal: stop at once (`save` still removes its temporary file)
        sys.exit(128 + signum)
    STOP.append(signum)


def stop_on_signals():
    """SIGTERM and SIGINT ask for a stop (STOP) that training, GradInit and lock waits honour at their next step."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, note_signal)


def command(main):
    """A script's main, guarded: a user error (BadInput) or a file it cannot read or write (OSError: missing, read-only,
    a full disk) is one line on stderr and exit code 2, no traceback; a diverged training, 3; a signal's stop, 143."""

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Stopped as e:
            print(e, file=sys.stderr, flush=True)
            sys.exit(143)
        except (BadInput, OSError) as e:
            message = str(e) if isinstance(e, BadInput) else f"cannot read or write: {e}"
            print(f"error: {message}", file=sys.stderr)
            sys.exit(getattr(e, "code", 2))  # a BadInput's own; a file's: 2

    return guarded
