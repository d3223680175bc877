"""Who may use the control API: loopback by default; on any other address, a token for changes.

- **Loopback bind** (``127.0.0.1``, ``::1``, ``localhost``): only programs on the box reach
  the socket, so no token is asked. A browser on the box can still be steered by a web page
  elsewhere, so the ``Host`` header must name this machine's loopback (defeats DNS rebinding)
  and writes with a foreign ``Origin`` are refused (defeats cross-site form posts).
- **Any other bind** (a LAN address, ``0.0.0.0``, and for tests ``127.0.0.2``): every write,
  ``/admin``, and every read of ``/api/`` (what people said is private: status, the captions
  stream) and ``/metrics`` need the token, from ``[control] token_file`` or the systemd credential
  ``control-token``; control refuses to start on such an address without one. Programs send
  ``Authorization: Bearer TOKEN``; a browser opens ``/?token=TOKEN`` (the captions screen) or
  ``/admin?token=TOKEN`` once and gets an HttpOnly, SameSite=Strict cookie derived from the token
  (an HMAC of it, so the token itself never travels back), and the address bar drops the token.
  The box's own screen reads without one: a client on loopback that names a loopback ``Host``.
  ``/health`` and the pages' files stay open (they hold nothing private).

Tokens are compared with ``hmac.compare_digest`` and never logged or returned.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon import config as config_mod
from services.control.models import refused
from services.control.setup import SetupCode

TOKEN_CREDENTIAL = "control-token"
COOKIE = "tolk_admin"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Paths that need the token on a LAN bind even to read (the admin page itself).
ADMIN_PREFIX = "/admin"
#: Reads that are private on a LAN bind: the API (captions, status, config) and the metrics.
PRIVATE_PREFIXES = ("/api/", "/metrics")
#: Pages a browser may log in at with ``?token=``.
LOGIN_PATHS = frozenset({"/", ADMIN_PREFIX})


class TokenMissing(RuntimeError):
    """A non-loopback bind without a token: the message says how to provide one."""


def is_loopback_bind(host: str) -> bool:
    """Only the three usual loopback names count: anything else is reachable, or may become so."""
    return host.strip("[]").lower() in LOOPBACK_HOSTS


def load_token(cfg: config_mod.Config) -> tuple[str | None, str]:
    """The control token and where it came from (never log the first element)."""
    return config_mod.read_secret(cfg.control.token_file, TOKEN_CREDENTIAL)


def no_token_message(listen: str) -> str:
    return (
        f"[control] listen = {listen!r} is not loopback, and no control token is set: anyone on the "
        f"network could change the box. Put a token in a file named by [control] token_file (or in "
        f"the systemd credential {TOKEN_CREDENTIAL!r}), or listen on 127.0.0.1"
    )


@dataclass
class AccessPolicy:
    """What the guard enforces; replaced as a whole when the config changes."""

    listen: str = "127.0.0.1:8080"
    token: str | None = None

    @classmethod
    def from_config(cls, cfg: config_mod.Config) -> AccessPolicy:
        return cls(cfg.control.listen, load_token(cfg)[0])

    @property
    def lan(self) -> bool:
        return not is_loopback_bind(self.listen.rpartition(":")[0])

    def problem(self) -> str | None:
        """Why this policy cannot be served, or None."""
        return no_token_message(self.listen) if self.lan and not self.token else None

    def token_ok(self, presented: str | None) -> bool:
        if not self.token or presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.token.encode("utf-8"))

    def cookie_value(self) -> str:
        assert self.token
        return hmac.new(self.token.encode("utf-8"), b"tolk admin cookie v1", hashlib.sha256).hexdigest()

    def cookie_ok(self, presented: str | None) -> bool:
        if not self.token or presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.cookie_value().encode("ascii"))


def _host_name(host_header: str) -> str:
    """``[::1]:8080`` -> ``::1``; ``localhost:8080`` -> ``localhost``."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _bearer(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _cookie(headers: Headers) -> str | None:
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except CookieError:  # a malformed cookie header is just no token
        return None
    morsel = cookie.get(COOKIE)
    return morsel.value if morsel is not None else None


def _on_the_box(scope: Scope, host: str) -> bool:
    """A reader on this machine that addressed it as loopback (a rebound name is not)."""
    client = scope.get("client")
    address = client[0] if client else ""
    return _host_name(host).lower() in LOOPBACK_HOSTS and address.strip("[]").lower() in LOOPBACK_HOSTS


_ADMIN_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tolk admin: token needed</title>
<style>body{font:18px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}</style></head>
<body><h1>The admin page needs the control token</h1>
<p>This box listens on the network, so changes need its token. Open
<code>/admin?token=YOUR-TOKEN</code> once; this browser then keeps it.</p>
<p>The token is in the file named by <code>[control] token_file</code> or in the systemd credential
<code>control-token</code> on the box.</p></body></html>"""


class AccessGuard:
    """ASGI middleware: Host and Origin checks on everything, the token where the policy asks."""

    def __init__(self, app: ASGIApp, policy: Callable[[], AccessPolicy], setup: SetupCode | None = None) -> None:
        self.app = app
        self._policy = policy
        self._setup = setup

    @property
    def policy(self) -> AccessPolicy:
        return self._policy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
        else:
            await refusal(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        policy = self.policy
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not policy.lan and _host_name(host).lower() not in LOOPBACK_HOSTS:
            return refused(403, "forbidden", f"Host {host[:80]!r} is not this box: use http://{policy.listen}/")
        method = "GET" if scope["type"] == "websocket" else scope["method"]
        writes = method not in SAFE_METHODS or scope["type"] == "websocket"
        if writes and (why := self._cross_site(headers, host)):
            return refused(403, "cross-site request refused", why)
        path: str = scope["path"]
        if not policy.lan:
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path in LOGIN_PATHS and method == "GET" and "token" in query:
            return self._login(query["token"][0], path)
        if path == ADMIN_PREFIX and method == "GET" and "setup" in query and self._setup is not None:
            return self._setup_login(query["setup"][0], path)
        private = path.startswith(PRIVATE_PREFIXES) or path.startswith(ADMIN_PREFIX)
        if method in SAFE_METHODS and not private:
            return None
        if method in SAFE_METHODS and not path.startswith(ADMIN_PREFIX) and _on_the_box(scope, host):
            return None
        if policy.token_ok(_bearer(headers)) or policy.cookie_ok(_cookie(headers)):
            return None
        if path.startswith(ADMIN_PREFIX) and method == "GET":
            return HTMLResponse(_ADMIN_LOGIN, status_code=401)
        return refused(
            401,
            "token required",
            "this box listens on the network: send Authorization: Bearer <control token>",
            **{"WWW-Authenticate": 'Bearer realm="tolk"'},
        )

    @staticmethod
    def _cross_site(headers: Headers, host: str) -> str | None:
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != host.lower():
                return f"a page from {origin[:80]!r} may not change this box"
            return None
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return "a page from another site may not change this box"
        return None

    def _setup_login(self, code: str, path: str) -> Response:
        """First boot: the one-time code on the screen (and in the journal) stands in for the token once."""
        if self._setup is None or not self._setup.redeem(code):
            why = "needs the token (that setup code is spent or wrong)"
            spent = _ADMIN_LOGIN.replace("needs the control token", why)
            return HTMLResponse(spent, 401)
        response = RedirectResponse(path, status_code=303)
        response.set_cookie(COOKIE, self.policy.cookie_value(), httponly=True, samesite="strict", path="/")
        return response

    def _login(self, token: str, path: str) -> Response:
        if not self.policy.token_ok(token):
            return HTMLResponse(_ADMIN_LOGIN.replace("needs the control token", "needs the right token"), 401)
        # Redirect so the token leaves the address bar and the history.
        response = RedirectResponse(path, status_code=303)
        response.set_cookie(COOKIE, self.policy.cookie_value(), httponly=True, samesite="strict", path="/")
        return response
