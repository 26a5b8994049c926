"""Errors a user can act on. Each says what was wrong, where, and what to do."""

from __future__ import annotations


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
