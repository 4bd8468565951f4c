"""The one error type of the `pitstop` command, shared by the parser (pitstop.cli.main)
and the cluster commands (pitstop.cli.commands), so neither imports the other's
module at load time."""


class CLIError(Exception):
    """A failure to report as one line on stderr, with a non-zero exit code."""
