"""Progress lines: what long work prints while it runs, silent when switched off."""

from __future__ import annotations

import sys


class Progress:
    """One line per fold and a few per fold while training; silent when switched off."""

    def __init__(self, enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stdout

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)
