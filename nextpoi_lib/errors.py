"""The family of user-facing errors: a mistake in what the user gave, told in one paragraph.

Every error a user can cause — parameters (`config.ConfigError`), data (`data.DataError`), the output folder
(`OutputError`), the device (`DeviceError`) — derives from `UserError`. Its message says what is wrong, where
(the key, column, file or line) and the fix. The command line, the batch summary and the notebooks show that
paragraph without a traceback (`nextpoi --debug` or NEXTPOI_DEBUG=1 shows it); anything else is a bug.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input; the message names the problem, where it is, and the fix."""


class OutputError(UserError):
    """The output root, a run folder or the cache cannot be written as asked."""


class DeviceError(UserError):
    """The requested training device is not available."""
