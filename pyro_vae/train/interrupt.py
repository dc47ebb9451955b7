"""Ctrl-C (SIGINT) and SIGTERM as a request to stop after the current training step."""

from __future__ import annotations

import signal
import threading
from typing import Any

from tqdm.auto import tqdm

__all__ = ["InterruptFlag"]


class InterruptFlag:
    """Context manager turning the first SIGINT (Ctrl-C) or SIGTERM (a scheduler, or
    ``torchrun`` stopping its workers) into a request to stop after the current step; a
    second one raises ``KeyboardInterrupt``. Only installed in the main thread, where Python
    delivers signals."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Interrupted: finishing the current step and writing a checkpoint ...")

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = None
