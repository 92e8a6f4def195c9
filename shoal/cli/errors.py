"""The CLI's one failure type. This module imports nothing from the CLI, so every command
module (the roles' included) can import it without a cycle."""


class CliError(Exception):
    """A user-facing failure: printed as one line (``shoal: <reason>``), exit status 1."""
