"""The look-up API's bearer token (``CX_HTTP_TOKEN``), checked where it is read: at start and by the CLIs."""

from __future__ import annotations

import os
import re
from typing import Final

from flows.config import ConfigError

TOKEN_ENV: Final = "CX_HTTP_TOKEN"
# RFC 6750's b64token: what a client can send after "Bearer " as it is.
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def http_token() -> str | None:
    """The token, or None when ``CX_HTTP_TOKEN`` is unset or empty.

    Raises:
        ConfigError: the value has spaces, a line break or other characters a bearer token cannot carry (a
            secret file's trailing newline left no client able to authenticate); never shows the value.
    """
    token = os.environ.get(TOKEN_ENV)
    if not token:
        return None
    if not _B64TOKEN.fullmatch(token):
        stripped = token.strip()
        hint = (" (it has leading or trailing white space or a line break, as a secret file's last line does)"
                if stripped and _B64TOKEN.fullmatch(stripped) else "")
        raise ConfigError(TOKEN_ENV, "must be a bearer token of letters, digits and - . _ ~ + / (then = padding), "
                          f"{len(token)} characters given{hint}")
    return token
