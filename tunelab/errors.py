"""Errors a user can act on. Each says what was wrong, where, and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunelab.training.data import DataReport


class TunelabError(Exception):
    """Base class of every error tunelab raises on purpose."""


class ConfigError(TunelabError):
    """The config file, an env var or a `config=` entry is wrong."""


class ModelNotFoundError(TunelabError):
    """A model name resolved nowhere; the message lists what was tried."""


class ModelFileError(TunelabError):
    """A model file is missing, corrupt, or does not match its expected sha256."""


class PromptError(TunelabError, ValueError):
    """A prompt is empty, not a string, or longer than the model's context."""


class GenerationOptionError(TunelabError, ValueError):
    """A generation option has a wrong name or value."""


class RemoteModelError(TunelabError):
    """A remote (OpenAI-compatible) service is down, refused the key, or answered an error."""


class BatchError(TunelabError):
    """Some prompts of a list failed; `completions` holds every answer, good and bad, in order."""

    def __init__(self, message: str, completions: list):
        super().__init__(message)
        self.completions = completions


class StoreError(TunelabError):
    """The store refused a change: a bad name, an ambiguous key name, a revoked key, an owner clash."""


class KeyNotFoundError(StoreError, LookupError):
    """No API key has this id or name; `tunelab keys list` shows the keys."""


class DataError(TunelabError, ValueError):
    """Training data that cannot be used; `report` lists every problem."""

    def __init__(self, message: str, report: DataReport):
        super().__init__(message)
        self.report = report


class PromptFileError(TunelabError, ValueError):
    """A prompts or expected-answers file is empty or has a bad line; the message names file and line."""


class TypedOutputError(TunelabError, ValueError):
    """An output_type tunelab cannot use, or an answer that did not become a valid object."""


class TrainingInterrupted(TunelabError):
    """A run stopped before its last step; its checkpoints remain for `resume=True`."""


class WriteFailed(TunelabError, OSError):
    """A file tunelab writes could not be written (a full disk, a size limit, no permission); what was
    there before (the last checkpoint, the previous record) is kept. The message names the file."""


class JobFailed(TunelabError):
    """A server-side fine-tuning job ended as failed or cancelled."""


class ModelNotServed(TunelabError):
    """Unknown to this server, or owned by someone else (the two are not told apart: ids do not leak)."""


class ContextExceeded(TunelabError):
    """A request's prompt plus max_tokens does not fit the model's context (the server answers 400)."""


class ToolCallError(TunelabError, ValueError):
    """`tools`, `tool_choice` or a tool turn in the conversation that tunelab cannot use; `param` names
    the request field (`tools[1].function.parameters`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
