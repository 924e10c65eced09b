"""openrs_nb: a notebook-first reproduction of Open-RS (GRPO for reasoning in small LLMs).

The package reports what it does through the `logging` logger "openrs_nb" (modules log to its children,
e.g. "openrs_nb.train"). By default INFO and above go to standard output as "[openrs_nb] …", so a
notebook shows them under the cell. To silence them, or to use your own logging setup instead:

    logging.getLogger("openrs_nb").setLevel(logging.WARNING)   # quieter
    logging.getLogger("openrs_nb").handlers.clear()            # only your handlers (records still propagate)
"""

import logging
import sys

__version__ = "0.1.0"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a notebook cell, pytest's capture, a redirect)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):  # StreamHandler.__init__ assigns one; the current sys.stdout is always used
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"[openrs_nb] {level}{super().format(record)}"


def _default_handler() -> None:
    logger = logging.getLogger(__name__)
    if any(h.get_name() == "openrs_nb.stdout" for h in logger.handlers):  # importlib.reload adds no second
        return
    handler = _StdoutHandler()
    handler.set_name("openrs_nb.stdout")
    handler.setFormatter(_Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:  # a level the user set before importing us stays
        logger.setLevel(logging.INFO)


_default_handler()
