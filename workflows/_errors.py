"""Exceptions raised while declaring and running workflows.

The tree::

    WorkflowError
     ├── WorkflowDefinitionError   a @workflow / @step / Agent declared wrongly (raised at decoration time)
     ├── WorkflowInputError        inputs that do not match the workflow's signature
     ├── ContextError              a step called without the context it needs
     ├── StepFailed                a step failed on every attempt (the last error is chained)
     └── AgentOutputError          an agent's model kept producing output it could not use (past max_repairs)
"""

from __future__ import annotations

__all__ = [
    "AgentOutputError",
    "ContextError",
    "StepFailed",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowInputError",
]


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


class AgentOutputError(WorkflowError):
    """An agent's model produced unusable output more often than its ``max_repairs`` allows.

    Unusable output is a reply that could not be parsed (invalid or
    truncated JSON) or a tool call the tools refused (an unknown tool,
    arguments that fail validation); each was sent back to the model for
    repair until the limit.  ``agent`` is the agent's name, ``problems``
    every problem of the run in order (the message quotes the last ones),
    ``max_repairs`` the limit and ``turns`` the LLM calls made.
    """

    def __init__(self, agent: str, problems: tuple[str, ...], max_repairs: int, turns: int) -> None:
        last = problems[-_QUOTED:]
        more = f" (and {len(problems) - len(last)} earlier)" if len(problems) > len(last) else ""
        super().__init__(
            f"agent {agent!r} gave up after {len(problems)} unusable model outputs in {turns} turn(s), "
            f"more than max_repairs={max_repairs}; the last{more}: {'; '.join(last)}. "
            "Raise the agent's max_repairs or max_tokens, simplify its tools' arguments, or use a stronger model."
        )
        self.agent = agent
        self.problems = problems
        self.max_repairs = max_repairs
        self.turns = turns

    def __reduce__(self) -> tuple[type[AgentOutputError], tuple[str, tuple[str, ...], int, int]]:
        # Pickled (a journal, a process pool) with its fields, not its message.
        return type(self), (self.agent, self.problems, self.max_repairs, self.turns)


#: How many of the last problems an AgentOutputError's message quotes.
_QUOTED = 3
