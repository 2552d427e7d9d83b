"""The one error of the Azure room."""


class DeployError(RuntimeError):
    """The deployment did not go through; the message says what state things were left in."""
