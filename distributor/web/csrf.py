"""CSRF protection for every form of the dashboard.

Each form carries the session's token in a hidden field named :data:`FIELD`; every POST is
checked against it, and a missing or wrong token is refused with 403 before anything is done.
The login form, which comes before any session, carries a token vouched for by a signed cookie
of its own (:meth:`distributor.web.auth.Sessions.login_token`). The session cookie is
SameSite=Strict besides, so another site's form does not even bring it along.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from distributor.web.pages import page

FIELD = "csrf_token"


def valid(form: FormData, expected: str) -> bool:
    """True when the form's token is there and equals ``expected``."""
    given = form.get(FIELD)
    return isinstance(given, str) and bool(given) and hmac.compare_digest(given, expected)


def refused(request: Request) -> Response:
    """The 403 answer to a form whose token is missing or wrong."""
    return page(
        request,
        "error.html.j2",
        {
            "title": "Form expired",
            "message": "This form's security token is missing or wrong, so nothing was done. "
            "Go back, reload the page and try again.",
        },
        status_code=403,
    )
