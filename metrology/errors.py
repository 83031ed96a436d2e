"""Errors shared by every layer."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: names the file (or option) and the problem. The CLI maps it to exit code 2.

    Parameters
    ----------
    source : str or path-like
        The file, option or field at fault.
    problem : str
        What is wrong, in one line.
    """

    def __init__(self, source, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
