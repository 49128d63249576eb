"""The one exception type for mistakes a user can make; the CLI turns it into one line and exit code 2."""


class UsageProblem(Exception):
    """Bad option, bad file, missing data: anything the user can fix. Printed as `Error: <message>`, exit 2."""

    exit_code = 2


class TrainingDiverged(Exception):
    """NaN or Inf in the loss or the weights. The run keeps its last good checkpoint; exit 3."""

    exit_code = 3
