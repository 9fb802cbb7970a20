"""The public signup endpoints: the hosted page `/s/<list>`, the form snippet a company's website embeds
(`/s/<list>/form`), the JSON endpoint for a website or CRM (`POST /s/<list>.json`), and the
confirmation link's page (`/s/confirm/<token>`: GET shows a button, POST confirms — mail scanners
follow links, and a scanner must not consent for anyone).

Every body is capped while it is read; bad input gets one sentence and a status, never a traceback.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot import values
from bot.contacts.signup import Pending, SignupForm, Signups, accepted_sentence, find_list
from bot.context import Context
from bot.db.models import ContactList
from bot.html_pages import attr, page, para
from bot.i18n import t
from bot.values import visible
from bot.webhooks import Refused, parse_json, read_capped, signatures_match

log = logging.getLogger(__name__)
HONEYPOT = "website"  # a field people don't see; bots fill it in
# Off-screen on its own: a website embedding the snippet has no `.hp` rule (display:none would tell
# bots to skip it); aria-hidden and tabindex=-1 keep it from screen readers and the keyboard.
HIDDEN = "position:absolute;left:-10000px;top:auto;width:1px;height:1px;overflow:hidden"


def form_html(ctx: Context, lst: ContactList, *, hosted: bool) -> str:
    """The signup form, as the hosted page shows it and as a website embeds it (absolute action)."""
    base = "" if hosted else ctx.settings.web.base_url
    source = "page" if hosted else "form"
    return (
        f"<form method='post' action='{attr(base)}/s/{attr(lst.name)}'>"
        f"<input type='hidden' name='source' value='{source}'>"
        # The wording this form shows: a form embedded before a re-wording records the text it showed.
        f"<input type='hidden' name='wording_version' value='{lst.wording_version}'>"
        f"<label for='pr-email'>{attr(t('Email address'))}</label>"
        "<input type='email' id='pr-email' name='email' required autocomplete='email' maxlength='320'>"
        f"<label for='pr-name'>{attr(t('Name (optional)'))}</label>"
        "<input type='text' id='pr-name' name='name' autocomplete='name' maxlength='200'>"
        f"<div class='hp' aria-hidden='true' style='{HIDDEN}'>"
        f"<label for='pr-{HONEYPOT}'>{attr(t('Leave this empty'))}</label>"
        f"<input type='text' id='pr-{HONEYPOT}' name='{HONEYPOT}' tabindex='-1' autocomplete='off' "
        "aria-hidden='true'></div>"
        f"<p id='pr-consent'>{attr(lst.consent_wording or '')}</p>"
        f"<button type='submit' aria-describedby='pr-consent'>{attr(t('Sign up'))}</button></form>"
    )


def _web_url(text: str) -> bool:
    """An absolute http(s) URL with a host, at most 2,000 characters: what a signup's page can be."""
    if len(text) > 2000 or not values.is_clean(text) or any(c.isspace() for c in text):
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _client(request: Request) -> tuple[str | None, str | None]:
    ip = request.client.host if request.client else None
    return ip, (request.headers.get("user-agent") or "")[:400] or None


def signup_routes(ctx: Context, signups: Signups) -> list[Route]:
    cap = ctx.settings.signup.max_body_bytes

    def not_open(name: str) -> Response:
        return page(
            t("No such signup"),
            para(t("There is no signup for a list named “{name}”.", name=visible(name[:60]))),
            404,
        )

    async def hosted(request: Request) -> Response:
        lst = await find_list(ctx, request.path_params["name"])
        if lst is None or not lst.signup_open:
            return not_open(request.path_params["name"])
        intro = para(t("Sign up for email from {org}: {list}.", org=ctx.settings.org.name, list=lst.name))
        return page(t("Sign up: {list}", list=lst.name), intro + form_html(ctx, lst, hosted=True))

    async def snippet(request: Request) -> Response:
        lst = await find_list(ctx, request.path_params["name"])
        if lst is None or not lst.signup_open:
            return not_open(request.path_params["name"])
        return PlainTextResponse(
            form_html(ctx, lst, hosted=False) + "\n", headers={"Cache-Control": "no-store"}
        )

    async def submit(request: Request) -> Response:
        name = request.path_params["name"]
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and kind != "application/x-www-form-urlencoded":
            # Our form posts url-encoded; a multipart or other body would read as no email at all.
            return page(
                t("Signup not taken"),
                para(
                    t(
                        "The signup form must be sent as application/x-www-form-urlencoded (what the form from "
                        "/s/{name}/form sends), not {kind}.",
                        name=name[:60],
                        kind=kind[:60],
                    )
                ),
                415,
            )
        try:
            body = await read_capped(request, cap)
            given = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
            fields = {
                k: v[0]
                for k, v in given.items()
                if k in ("email", "name", "source", "wording_version", HONEYPOT)
            }
            twice = next((k for k in fields if len(given[k]) > 1), None)
            if twice is not None:  # email=a@…&email=b@…: which one did the person mean?
                raise Refused(
                    400, t("The form gives “{name}” more than once; send each field once.", name=twice)
                )
            ip, agent = _client(request)
            await signups.request(
                SignupForm(
                    name,
                    fields.get("email", ""),
                    fields.get("name", ""),
                    fields.get(HONEYPOT, ""),
                    "form" if fields.get("source") == "form" else "page",
                    request.headers.get("referer", "")[:300] or None,
                    ip,
                    agent,
                    wording_version=fields.get("wording_version"),
                )
            )
        except Refused as exc:
            back = (
                f"<p><a href='/s/{attr(name)}'>{attr(t('Back to the form'))}</a></p>"
                if exc.status != 404
                else ""
            )
            refused = page(t("Signup not taken"), para(exc.sentence) + back, exc.status)
            refused.headers.update(exc.headers)
            return refused
        except ValueError:
            return page(t("Signup not taken"), para(t("That form could not be read.")), 400)
        return page(t("Check your inbox"), f"<p role='status'>{attr(accepted_sentence())}</p>")

    def _trusted(request: Request) -> bool:
        """A server-to-server caller with signup.api_key; a wrong key is refused, never taken as none."""
        given = request.headers.get("authorization")
        if given is None:
            return False
        key = ctx.settings.signup.api_key
        scheme, _, token = given.partition(" ")
        if not key or scheme.lower() != "bearer" or not signatures_match(key, token.strip()):
            raise Refused(
                401, t("That API key is not this Postroom's signup.api_key; send none or the right one.")
            )
        return True

    async def submit_json(request: Request) -> Response:
        try:
            body = await read_capped(request, cap)
            data = parse_json(
                body,
                t("The body is not JSON: send {example}.", example='{"email": "…"}'),
                duplicate=t("The key “{name}” appears twice in one JSON object; send each field once."),
            )
            if not isinstance(data, dict) or not isinstance(data.get("email"), str):
                raise Refused(400, t("The JSON needs an “email” string."))
            text = {k: data.get(k) for k in ("name", "page_url", HONEYPOT)}
            if any(v is not None and not isinstance(v, str) for v in text.values()):
                raise Refused(400, t("“name”, “page_url” and “website” must be strings when given."))
            if text["page_url"] and not _web_url(text["page_url"]):
                raise Refused(
                    422,
                    t(
                        "“page_url” must be the page's absolute http or https address, at most 2,000 characters."
                    ),
                )
            ip, agent = _client(request)
            await signups.request(
                SignupForm(
                    request.path_params["name"],
                    data["email"],
                    text["name"] or "",
                    text[HONEYPOT] or "",
                    "api",
                    (text["page_url"] or "")[:300] or None,
                    ip,
                    agent,
                    trusted=_trusted(request),
                )
            )
        except Refused as exc:
            return JSONResponse({"error": exc.sentence}, status_code=exc.status, headers=exc.headers)
        return JSONResponse({"status": "accepted", "message": accepted_sentence()}, status_code=202)

    def refusal(found: Pending | None) -> Response:
        """The page for a link that confirms nothing (any more)."""
        if found is not None and found.state == "expired":
            return page(
                t("Link expired"),
                para(t("This confirmation link has expired; sign up again to get a new one.")),
                410,
            )
        if found is not None and found.state == "replaced":
            return page(
                t("Link replaced"),
                para(
                    t(
                        "A newer signup replaced this confirmation link: use the link in the most recent "
                        "mail, or sign up again."
                    )
                ),
                410,
            )
        if found is not None and found.state == "used":
            return page(
                t("Link already used"),
                para(
                    t("This confirmation link has been used already; to join the list again, sign up again.")
                ),
                410,
            )
        return page(
            t("Link not valid"),
            para(t("This confirmation link is not valid. If you copied it, check that it is complete.")),
            400,
        )

    async def confirm_page(request: Request) -> Response:
        token = request.path_params["token"]
        found = await signups.pending(token)
        if found is None or found.state not in ("pending", "confirmed"):
            return refusal(found)
        if found.state == "confirmed":
            return page(t("Subscribed"), para(t("You are on the list “{list}”.", list=found.list_name)))
        return page(
            t("Confirm your subscription"),
            para(t("Confirm that you want email on the list “{list}”.", list=found.list_name))
            + f"<form method='post' action='/s/confirm/{attr(token)}'><button type='submit'>"
            + attr(t("Confirm my subscription"))
            + "</button></form>",
        )

    async def confirm(request: Request) -> Response:
        try:
            await read_capped(request, cap)
        except Refused as exc:
            return page(t("Signup not taken"), para(exc.sentence), exc.status)
        ip, agent = _client(request)
        found = await signups.confirm(request.path_params["token"], ip=ip, user_agent=agent)
        if found is None or found.state != "confirmed":
            return refusal(found)
        return page(
            t("Subscribed"),
            f"<p role='status'>{attr(t('Thank you: you are on the list “{list}”.', list=found.list_name))}</p>",
        )

    async def json_get(request: Request) -> Response:
        """The JSON endpoint takes POST only; without this a GET would be the hosted page of a list named
        “<list>.json”."""
        return JSONResponse(
            {"error": t("This endpoint takes POST with a JSON body: {example}.", example='{"email": "…"}')},
            status_code=405,
            headers={"Allow": "POST"},
        )

    return [
        Route("/s/confirm/{token}", confirm_page, methods=["GET"]),
        Route("/s/{name}.json", json_get, methods=["GET"]),
        Route("/s/confirm/{token}", confirm, methods=["POST"]),
        Route("/s/{name}.json", submit_json, methods=["POST"]),
        Route("/s/{name}/form", snippet, methods=["GET"]),
        Route("/s/{name}", hosted, methods=["GET"]),
        Route("/s/{name}", submit, methods=["POST"]),
    ]
