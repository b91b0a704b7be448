"""What a client may learn from an error: the reason, never the server's file layout or backend URLs.

Messages built from exceptions (a version that failed its checksum, an event log that is not open) name
paths and URLs that help an operator and an attacker alike; ``public_detail`` replaces them with
``<path>`` for the client and logs the full text once, so the operator still finds it in the log.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict

log = logging.getLogger(__name__)

# a token holding a '/' or '\': POSIX and Windows paths, file:// and redis:// URLs (credentials included)
_PATH = re.compile(r"(?:[\w.~:@%+=$-]*[/\\])+[\w.~:@%+=$-]*")
_LOGGED: OrderedDict[str, None] = OrderedDict()  # recent full texts already logged (bounded)
_LOGGED_MAX = 256


def redact_paths(text: str) -> str:
    """``text`` with every path-like token replaced by ``<path>``."""
    return _PATH.sub("<path>", text)


def public_detail(text: str, context: str) -> str:
    """The client's version of ``text``; when anything was removed, the full text is logged (once per
    distinct text, since probes like ``/readyz`` repeat it every fraction of a second)."""
    public = redact_paths(text)
    if public != text and text not in _LOGGED:
        _LOGGED[text] = None
        if len(_LOGGED) > _LOGGED_MAX:
            _LOGGED.popitem(last=False)
        log.warning("%s (the client was told: %s): %s", context, public, text)
    return public
