"""Log level for every entry point (the command line, Ray workers): warnings unless CWM_DEBUG is set.

structlog's own default prints debug lines, which would drown the live display.
"""

from __future__ import annotations

import logging
import os

import structlog


def configure_logging() -> None:
    level = logging.DEBUG if os.environ.get("CWM_DEBUG") else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
