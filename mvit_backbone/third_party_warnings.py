"""Filters for third-party warnings known to be harmless here (standard library only).

``import mvit_backbone`` imports detectron2, whose import and layers make torch print
deprecation notices that a user can do nothing about (``torch.jit.script is deprecated``,
``pkg_resources is deprecated``, ``torch.meshgrid: ... indexing argument``, torch.fx's
``is_fx_tracing`` notice). Each filter matches one message, so every other warning still shows.
"""
from __future__ import annotations

import logging
import warnings

# (category, start of the message) of each warning filtered
KNOWN_HARMLESS_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.(script|interface|trace)` is deprecated"),
    (UserWarning, r"pkg_resources is deprecated as an API"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the "
                  r"indexing argument"),
)
# torch.fx logs this through logging, once per process, when detectron2 asks `is_fx_tracing`
KNOWN_HARMLESS_LOG_MESSAGES: dict[str, str] = {
    "torch.fx._symbolic_trace": "is_fx_tracing will return true for both",
}


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_known_warnings() -> None:
    """Install the filters (idempotent)."""
    for category, message in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for logger_name, start in KNOWN_HARMLESS_LOG_MESSAGES.items():
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage(start))
