"""User-facing errors. The CLI prints these without a traceback and exits non-zero."""


class UserError(Exception):
    """An error caused by the user's input (a file, an argument, a frame), with a clear message."""


class ConfigError(UserError):
    pass


class RuleError(UserError):
    """One or more bad rules. ``errors`` lists ``(line, column, message)`` for each."""

    def __init__(self, filename, errors):
        self.filename = filename
        self.errors = list(errors)
        super().__init__("\n".join(self.lines()))

    def lines(self):
        """One ``file:line:column: error: message`` line per error (``file: error: ...`` for an
        error about the whole file)."""
        return [f"{self.filename}:{line}:{col}: error: {msg}" if line else
                f"{self.filename}: error: {msg}" for line, col, msg in self.errors]


class PcapError(UserError):
    pass
