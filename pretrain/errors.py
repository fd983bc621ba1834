"""Errors that are the user's to fix: the CLI prints them without a traceback."""


class UserError(Exception):
    """A mistake in the user's config or data. The message names the culprit and what to do."""


class ConfigError(UserError):
    """The pipeline config is invalid; the message lists every problem with its key path."""


class InputError(UserError):
    """An input file or artifact cannot be used; the message names the file (and line, where known)."""
