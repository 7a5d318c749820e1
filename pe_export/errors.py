"""Errors users can act on. The CLI prints their message as one line and exits with their code."""


class PeExportError(Exception):
    """An error with a message meant for the user and the exit code the CLI returns."""

    exit_code = 1


class UsageError(PeExportError):
    """Bad input: an unknown name, a missing or unreadable file, a checkpoint that does not fit."""

    exit_code = 2


class CheckpointError(UsageError):
    """A checkpoint that cannot be read, is unsafe, or does not match the variant."""
