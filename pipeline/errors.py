"""The two ways a run ends badly on purpose, and their exit codes (ARCHITECTURE.md)."""


class PipelineError(Exception):
    """Bad input or configuration: one line saying what is wrong and where. Exit 2."""

    exit_code = 2


class GateFailed(Exception):
    """A gate's verdict was FAIL (k6's code for failed thresholds). Exit 99."""

    exit_code = 99
