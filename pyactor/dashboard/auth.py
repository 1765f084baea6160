"""Who may see the dashboard: whoever holds the cluster token.

    GET /?token=<hex>  --token right--> Set-Cookie (HttpOnly, SameSite=Strict) + 302 to /
    any request        --cookie or "Authorization: Bearer <hex>"--> served
                       --neither, or wrong--> 401 with the same short body for every path
    POST (kill, cancel) --Bearer, or cookie + "X-PyActor-Dashboard: 1" header--> served

The cookie holds an HMAC of the token, not the token: a leaked cookie opens this dashboard but
cannot join the cluster. The custom header on cookie-authenticated POSTs means another site's
form cannot trigger a kill (browsers send no custom header cross-site without CORS, which this
server never grants). A 401 says nothing about the route, the cluster or the server's version.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse

from aiohttp import web

COOKIE = "pyactor_dashboard"
POST_HEADER = "X-PyActor-Dashboard"
UNAUTHORIZED_BODY = "401: Unauthorized\n"


def cookie_value(token: bytes) -> str:
    return hmac.new(token, b"pyactor dashboard cookie", hashlib.sha256).hexdigest()


def _token_matches(text: str | None, token: bytes) -> bool:
    if not text:
        return False
    try:
        given = bytes.fromhex(text.strip())
    except ValueError:
        return False
    return hmac.compare_digest(given, token)


def make_middleware(token: bytes):
    expected_cookie = cookie_value(token)

    @web.middleware
    async def require_token(request: web.Request, handler):
        query_token = request.query.get("token")
        if query_token is not None and request.method == "GET":
            if not _token_matches(query_token, token):
                return _unauthorized()
            # The token leaves the URL (history, Referer) at once; the cookie carries it on.
            query = [(k, v) for k, v in request.query.items() if k != "token"]
            target = request.path + ("?" + urllib.parse.urlencode(query) if query else "")
            response = web.Response(status=302, headers={"Location": target})
            response.set_cookie(COOKIE, expected_cookie, httponly=True, samesite="Strict",
                                path="/")
            return response
        bearer = request.headers.get("Authorization", "")
        by_bearer = bearer.startswith("Bearer ") and _token_matches(bearer[7:], token)
        cookie = request.cookies.get(COOKIE, "")
        by_cookie = bool(cookie) and hmac.compare_digest(cookie, expected_cookie)
        if not (by_bearer or by_cookie):
            return _unauthorized()
        if request.method not in ("GET", "HEAD") and not by_bearer \
                and request.headers.get(POST_HEADER) != "1":
            return _unauthorized()
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return require_token


def _unauthorized() -> web.Response:
    # No WWW-Authenticate realm and no server banner: nothing about what is behind it.
    response = web.Response(status=401, text=UNAUTHORIZED_BODY, content_type="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response
