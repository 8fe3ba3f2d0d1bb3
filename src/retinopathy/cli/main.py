"""The ``retinopathy`` command: ``main(argv)`` dispatches each subcommand to the module that holds it."""
from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
import warnings
from pathlib import Path

from .. import __version__
from ..errors import DataWarning, NotWritten, RetinopathyError
from ..launch import launched_as, others_say_it, resume_command
# Each command's module and its help. Most build a parser of their own (torchvision-references style, ``cli(argv)``);
# synth's and data's ``add_parser`` add theirs to this one. A module is imported only for its command: --help and
# --version answer at once, without the seconds it takes to import torch.
COMMANDS = {
    "synth": ("retinopathy.cli.synth", "write a synthetic fundus dataset (Kaggle or lab format)"),
    "data": ("retinopathy.cli.data_check", "inspect datasets"),
    "train": ("retinopathy.training.train", "train a DR grader (frozen, then fine-tuned)"),
    "evaluate": ("retinopathy.evaluation.evaluate", "evaluate a checkpoint on a dataset split"),
    "experiment": ("retinopathy.experiments.runner", "run a grid of training runs from a YAML file"),
    "report": ("retinopathy.reporting.report", "build an HTML/Markdown report of runs"),
    "prepare": ("retinopathy.data.prepare", "decode once at reduced size into a fast cache"),
    "predict": ("retinopathy.inference.predict",
                "grade photographs with a trained checkpoint; --cam explains them (Grad-CAM heatmaps)"),
    "export": ("retinopathy.inference.export", "export a checkpoint to ONNX, torch.export (pt2) or TorchScript"),
}


class CommandParser(argparse.ArgumentParser):
    """A command's parser under the ``retinopathy`` one (synth's, data's, data check's): it reports the arguments it
    does not know itself, with its own usage and name, as the commands that parse alone do (else the top-level
    parser would, with its usage)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser(command=None) -> argparse.ArgumentParser:
    """The ``retinopathy`` parser; ``command``, a module with ``add_parser``, adds its own, the others stand in."""
    parser = argparse.ArgumentParser(prog="retinopathy", description="Diabetic-retinopathy grading toolkit")
    parser.add_argument("--version", action="version", version=f"retinopathy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for name, (module, text) in COMMANDS.items():
        if command is not None and command.__name__ == module:
            command.add_parser(sub, text)
        else:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards (tests call main in-process)
        warnings.simplefilter("once", DataWarning)  # once per message, though each split's dataset raises it
        others = warnings.showwarning

        def show(message, category, *rest, **kw):  # the package's data warnings as the CLI's other warnings
            if issubclass(category, DataWarning):
                if not others_say_it():  # under torchrun every process meets it: one per machine says it
                    print(f"warning: {message}", file=sys.stderr)
            else:
                others(message, category, *rest, **kw)
        warnings.showwarning = show
        return _run(argv)


def _run(argv: list[str]) -> int:
    argv = [_home(a) for a in argv]
    if (empty := _empty_argument(argv)) is not None:
        print(f"error: {empty}: an empty value (an unset shell variable?), which would read as no value or as the "
              "current folder; give it, or leave it out", file=sys.stderr)
        return 2
    try:
        refuse_processes(argv[0] if argv else "")
        command = importlib.import_module(COMMANDS[argv[0]][0]) if argv and argv[0] in COMMANDS else None
        if hasattr(command, "cli"):
            return command.cli(argv[1:]) or 0
        args = build_parser(command).parse_args(argv)
        return args.func(args) or 0
    except RetinopathyError as e:
        rank, world, _ = launched_as()
        if not e.rank_local and others_say_it():  # under torchrun every process met it: one per machine says it
            return e.exit_code
        run = getattr(e, "run", None)  # a training run that stopped unsaved (a full disk) can be continued
        unsaved = run or isinstance(e, NotWritten) and argv[:1] == ["experiment"]
        print(f"error: {f'rank {rank}: ' if world > 1 and e.rank_local else ''}{e}"
              + (_how_to_continue(argv, run) if unsaved else ""), file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        if not _reader_left():
            raise
        for stream in (sys.stdout, sys.stderr):  # and no second error when Python flushes them at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        return 141  # 128 + SIGPIPE, a shell's status for it
    except OSError as e:  # a path the command could not create, read or write (read-only folder, full disk ...)
        if e.filename is None:
            raise
        print(f"error: {e.filename2 or e.filename}: {e.strerror or e}", file=sys.stderr)  # 2: os.replace's target
        return 2
    except KeyboardInterrupt as e:
        if launched_as()[0] == 0:  # under torchrun every rank is interrupted: rank 0 says so, once
            print("\ninterrupted" + _how_to_continue(argv, getattr(e, "run", None)), file=sys.stderr)
        return 130


def refuse_processes(command: str) -> None:
    """Only ``train`` runs as one of torchrun's processes: any other command would run whole in each, racing for its
    outputs (an experiment's lock). (SLURM's variables are not asked: an sbatch script's own step has them too.)"""
    world = int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1
    if world > 1 and command in COMMANDS and command != "train":
        raise RetinopathyError(f"{command} runs in one process, not as torchrun's {world}: run `retinopathy "
                               f"{command} ...` alone" + ("; its cells train in one process each (one run on several "
                                                          "GPUs: torchrun --nproc_per_node N -m retinopathy train ...)"
                                                          if command == "experiment" else ""))


def _empty_argument(argv: list[str]) -> str | None:
    """Where an empty argument (``--out ""``, ``--out=``, a positional ``""``) is, said for an error; None when
    there is none."""
    for i, arg in enumerate(argv):
        if arg.startswith("-") and arg.endswith("="):
            return arg[:-1]
        if arg == "":
            return argv[i - 1] if i and argv[i - 1].startswith("-") else \
                f"the argument after {' '.join(argv[:i])!r}" if i else "the command"
    return None


def _home(arg: str) -> str:
    """``~`` at the start of an argument or of an option's value (``--out=~/x``, which the shell leaves alone): the
    home folder, as for every path, rather than a folder named ``~`` in the current one."""
    if arg.startswith("~"):
        return os.path.expanduser(arg)
    option, eq, value = arg.partition("=")
    home = eq and option.startswith("--") and value.startswith("~")
    return f"{option}={os.path.expanduser(value)}" if home else arg


def _reader_left() -> bool:
    """Whether stdout or stderr is a pipe whose reader has gone (`| head`): then the command stops quietly, as Unix
    tools do."""
    try:
        poller = select.poll()
        for stream in (sys.stdout, sys.stderr):
            poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a file (captured)
        return False


def _option_in(argv: list[str], option: str) -> str | None:
    """The value of ``option`` (``--out X`` or ``--out=X``) on a command line, None when it is not there."""
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg[len(option) + 1:]
    return None


def _how_to_continue(argv: list[str], run) -> str:
    """What an interrupted (or unsaved) train or experiment command can do next (``run``: the training run's
    folder)."""
    if argv[:1] == ["experiment"]:
        return "; run the same command again: finished cells are skipped, the interrupted one resumes"
    if run is None and argv[:1] == ["train"]:  # interrupted before it read its options (importing torch)
        run = _option_in(argv, "--resume") or _option_in(argv, "--out")
    if run is None:
        return ""
    if not (Path(run) / "checkpoints" / "last.pt").exists():
        return f"; no epoch of {run} had finished: run the same command again"
    return (f"; the run keeps its last finished epoch in {run}/checkpoints/last.pt: continue it with "
            f"`{resume_command(run)}`")

if __name__ == "__main__":
    sys.exit(main())
