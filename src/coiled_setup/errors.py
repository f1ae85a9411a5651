"""Errors the user sees: one sentence, and the exit code that goes with it."""

from __future__ import annotations

OK = 0
STEP_FAILED = 1
BAD_INPUT = 2
MISSING_PERMISSION = 3
LOCKED = 4  # another run is changing the same project
ORG_POLICY = 5  # an organization policy blocks the run (told before any change)
INTERRUPTED = 130


class UserError(Exception):
    """An expected failure: printed as its message alone, no traceback."""

    def __init__(self, message: str, code: int = STEP_FAILED):
        super().__init__(message)
        self.message = message
        self.code = code


class BadInput(UserError):
    def __init__(self, message: str):
        super().__init__(message, BAD_INPUT)
