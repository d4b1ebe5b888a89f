"""Secrets on the way in and out: URLs with the password hidden, passwords from the environment or a file.

Every URL that goes into a log line, an error message or a status message passes through
:func:`redact_url`. Passwords reach the process without appearing in ``ps`` through
:data:`PASSWORD_ENV` or a password file (:func:`resolve_password`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)

PASSWORD_ENV = "OMNIZIP_MQTT_PASSWORD"
MAX_PASSWORD_FILE_BYTES = 64 * 1024


def redact_url(url: str) -> str:
    """``url`` with the credentials before ``@`` replaced by ``***`` (for logs, errors and status).

    Works on malformed URLs too (no scheme, a password containing ``/`` or ``@``), because those
    are exactly the ones that end up in error messages::

        redact_url("mqtt://admin:pw@10.0.0.2:1883")  -> "mqtt://***@10.0.0.2:1883"
        redact_url("rtsp://cam:p/w@host/stream")     -> "rtsp://***@host/stream"
        redact_url("udp://127.0.0.1:5000")           -> unchanged
    """
    if not isinstance(url, str):
        return url
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    rest = url[start:]
    end = len(rest)
    for sep in "?#":
        pos = rest.find(sep)
        if pos >= 0:
            end = min(end, pos)
    candidate = rest[:end]
    authority = candidate.split("/", 1)[0]
    if "@" in authority:
        cut = authority.rfind("@")
    elif "@" in candidate and ":" in candidate[: candidate.find("@")]:
        cut = candidate.rfind("@")  # user:pass/word@host: the password has a '/' that ended the authority
    else:
        return url
    return url[:start] + "***" + rest[cut:]


def resolve_password(password: str | None, password_file: str | None, *, url_has_password: bool = False,
                     has_username: bool = True, environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password from (in this order) a file, the command line, the URL, or the environment.

    Args:
        password: ``--password`` (visible in ``ps``: a warning is logged).
        password_file: ``--password-file``; its first line is the password.
        url_has_password: the broker URL carries ``user:password@`` (also visible in ``ps``).
        has_username: a user name is configured; without one the environment is not consulted (an
            anonymous connection cannot carry a password).
        environ: the environment (default ``os.environ``); :data:`PASSWORD_ENV` is read from it.

    Returns:
        The password to use, or None to keep the URL's (or have none).

    Raises:
        ValueError: both ``password`` and ``password_file``, or a file that cannot be read.
    """
    if password is not None and password_file is not None:
        raise ValueError("give the broker password once: --password or --password-file, not both")
    if password_file is not None:
        try:
            with open(password_file, "rb") as f:
                raw = f.read(MAX_PASSWORD_FILE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read the password file {password_file!r}: {exc.strerror or exc}") from None
        if len(raw) > MAX_PASSWORD_FILE_BYTES:
            raise ValueError(f"password file {password_file!r} is larger than {MAX_PASSWORD_FILE_BYTES} bytes")
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"password file {password_file!r} is not UTF-8 text") from None
        if not lines or not lines[0]:
            raise ValueError(f"password file {password_file!r} is empty")
        return lines[0]
    if password is not None or url_has_password:
        logger.warning("a password on the command line (--password or user:password@ in the broker URL) is "
                       "visible to other users in `ps`; prefer %s or --password-file", PASSWORD_ENV)
        return password
    env = os.environ if environ is None else environ
    return (env.get(PASSWORD_ENV) or None) if has_username else None
