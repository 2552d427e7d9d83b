"""What an export can fail with: a setup to fix (exit 2) or an export the gate refuses (exit 1)."""


class ExportSetupError(RuntimeError):
    """A tool the export needs is missing or the request cannot be done; the message says the fix."""


class ExportRefused(RuntimeError):
    """The export was made but is not faithful (a file missing, the parity gate failed): not logged.
    `parity` holds the gate's measurements when the gate was what refused it."""

    def __init__(self, message: str, parity=None):
        super().__init__(message)
        self.parity = parity
