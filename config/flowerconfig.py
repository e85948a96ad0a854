"""Flower's configuration file (``celery -A workers flower --conf=config/flowerconfig.py``): every
request without the basic-auth credentials gets 401 — ``/metrics``, ``/healthcheck`` and the
static files included, which Flower 2.x serves to anyone even with ``--basic-auth``.

Flower has no plugin mechanism (mher/flower#986); its configuration file is Python that Flower
runs before it builds its web application, so this file puts one check in front of Flower's
router (``find_handler``, tornado's routing entry point). Flower refuses to start with it unless
basic auth is configured (``--basic-auth=user:password`` or ``FLOWER_BASIC_AUTH``, which keeps
the password out of the process list), each credential a non-empty user and password.
Credentials are never written here.

Names at the top level of this file are read by Flower as options: every other name starts with
an underscore.
"""

from __future__ import annotations

import base64 as _base64
import binascii as _binascii
import hmac as _hmac
from typing import Any as _Any

from flower.app import Flower as _Flower
from tornado.options import options as _options
from tornado.web import RequestHandler as _RequestHandler

_credentials = [c.encode() for c in (_options.basic_auth or [])]
if not _credentials or any(not u or not p for u, _, p in (c.partition(b":") for c in _credentials)):
    raise SystemExit(
        "Flower needs basic auth with this configuration: set FLOWER_BASIC_AUTH=user:password "
        "(or --basic-auth=user:password), a non-empty user and password"
    )


def _authorized(request: _Any) -> bool:
    """Whether ``request`` carries one of the configured basic-auth credentials."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = _base64.b64decode(token.strip(), validate=True)
    except (_binascii.Error, ValueError):
        return False
    return any(_hmac.compare_digest(given, known) for known in _credentials)


class _Unauthorized(_RequestHandler):
    """Answers 401, asking for basic auth, whatever the path and method."""

    def check_xsrf_cookie(self) -> None:
        """No XSRF check: nothing is done but refusing (a 401, not a 403)."""

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.finish("Access denied")


_find_handler = _Flower.find_handler


def _checked_find_handler(self: _Any, request: _Any, **kwargs: _Any) -> _Any:
    if not _authorized(request):
        return self.get_handler_delegate(request, _Unauthorized)
    return _find_handler(self, request, **kwargs)


if getattr(_Flower.find_handler, "__name__", "") != _checked_find_handler.__name__:
    _Flower.find_handler = _checked_find_handler
