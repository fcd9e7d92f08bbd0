"""One exception type for every problem a user must fix, carrying a one-line message; and the one-line form of
any other exception (:func:`one_line`)."""


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


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``: how an exception of code we do not own (the bank's model, a library)
    is reported in one line, e.g. in the failures table."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
