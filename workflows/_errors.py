"""Exceptions raised while declaring and running workflows.

The tree::

    WorkflowError
     ├── WorkflowDefinitionError   a @workflow / @step / Agent declared wrongly (raised at decoration time)
     ├── WorkflowInputError        inputs that do not match the workflow's signature
     ├── ContextError              a step called without the context it needs
     └── StepFailed                a step failed on every attempt (the last error is chained)
"""

from __future__ import annotations

__all__ = ["ContextError", "StepFailed", "WorkflowDefinitionError", "WorkflowError", "WorkflowInputError"]


class WorkflowError(Exception):
    """Base class of every exception raised by :mod:`workflows`."""


class WorkflowDefinitionError(WorkflowError, TypeError):
    """A workflow, step or agent is declared wrongly; raised when it is declared."""


class WorkflowInputError(WorkflowError, ValueError):
    """The inputs given to a workflow do not match its signature."""


class ContextError(WorkflowError, TypeError):
    """A step was called without a workflow context as its first argument."""


class StepFailed(WorkflowError):
    """A step failed on every attempt; ``__cause__`` is the last attempt's error.

    ``attempts`` is how many times the step ran (1 + retries used).
    """

    def __init__(self, step: str, attempts: int, cause: BaseException) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {type(cause).__name__}: {cause}")
        self.step = step
        self.attempts = attempts
