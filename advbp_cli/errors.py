"""The one exception type for mistakes a user can make; the CLI turns it into one line and exit code 2."""


class UsageProblem(Exception):
    """Bad option, bad file, missing data: anything the user can fix. Printed as `Error: <message>`, exit 2."""

    exit_code = 2


class TrainingDiverged(Exception):
    """NaN or Inf in the loss or the weights. The run keeps its last good checkpoint; exit 3."""

    exit_code = 3


class DataMissing(UsageProblem):
    """A data set's files are not in its folder and were not downloaded (download off, or it failed). The command
    that chose the data folder rewords it with where that folder came from (data.paths.explained)."""

    def __init__(self, label: str, folder, expected: str, reason: str, detail: str = ""):
        self.label, self.folder, self.expected, self.reason = label, folder, expected, reason
        super().__init__(f"{label} not found in {folder} ({reason}); place {expected} there, or point --data-dir "
                         "or $ADVBP_DATA_DIR at the folder that holds it" + (f". Details: {detail}" if detail else ""))
