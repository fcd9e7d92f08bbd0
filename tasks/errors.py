"""One exception type for every problem a user must fix, carrying a one-line message."""


class LimelightError(Exception):
    """A problem with the user's input (config, data, model, output folder).

    The message is one line that names the file, key, column or row, so the CLI can print it
    without a traceback.
    """


class ConfigError(LimelightError):
    """The config file is missing, unreadable or invalid."""


class InputError(LimelightError):
    """An input file (decisions, reference, ids) is missing, unreadable or invalid."""


class ModelError(LimelightError):
    """The model is missing, corrupt, or breaks the input/output contract."""
