"""The errors a user must act on. Each carries one line saying what is wrong and what was expected;
the CLI prints it and exits with the error's code (2: the input is wrong and nothing ran, 1: a stage
could not finish). Any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every user-facing error."""

    exit_code = 1


class ParamsError(PipelineError, ValueError):
    """A params problem, phrased as one line naming the key, the value and what is allowed."""

    exit_code = 2


class DataError(PipelineError, ValueError):
    """The competition folder is not usable; the message says what is wrong and what was expected."""

    exit_code = 2


class CheckError(PipelineError, ValueError):
    """A check run before any work found params, data or artifacts that cannot work together."""

    exit_code = 2


class StageError(PipelineError, RuntimeError):
    """A stage cannot run or failed in a way the user must act on; one line says how."""

    exit_code = 1
