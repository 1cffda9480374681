"""The error hierarchy; the CLI maps each class to one exit code (see cli.py)."""


class EdgecompError(Exception):
    """Base of every error edgecomp reports to a user instead of a traceback."""

    exit_code = 3


class UserError(EdgecompError):
    """Bad model, bad arguments, or a model that does not fit: exit code 2."""

    exit_code = 2


class UnsupportedModelError(UserError):
    """The model uses something edgecomp cannot compile (an op, a dynamic shape, a dtype)."""


class DoesNotFitError(UserError):
    """The built model exceeds the target's flash or RAM budget."""


class ToolError(EdgecompError):
    """A tool or device failed: missing toolchain, compiler error, QEMU/board timeout: exit code 3."""

    exit_code = 3


class DeviceError(ToolError):
    """The device (board or QEMU) timed out, faulted or sent an unusable reply."""


class MismatchError(EdgecompError):
    """The compiled model's outputs disagree with the onnxruntime reference: exit code 1."""

    exit_code = 1
