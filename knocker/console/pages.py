"""
The console's pages as HTML, with C{twisted.web.template} (which escapes
every value): one function a page, data in (from L{knocker.console.view}),
bytes out.  Every page says what it shows and what to do; forms and links
only, so the keyboard does everything; one column at narrow widths.
"""

import base64
import hashlib
from urllib.parse import quote

from twisted.python.failure import Failure
from twisted.web.template import Tag, XMLString, flattenString, tags

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#111;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:.5em 1em}
header a{color:#fff;margin-right:1em}
a:focus,button:focus,input:focus,select:focus{outline:3px solid #f5a623;outline-offset:2px}
main{max-width:60em;margin:auto;padding:0 1em 2em}
.intro{background:#eef3f8;padding:.5em 1em;border-left:4px solid #1f3a5f}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ccc;padding:.3em .5em;text-align:left}
button{padding:.3em .8em}
nav form{display:inline}
.skip{position:absolute;left:-999px}.skip:focus{left:1em}
form.filters label{display:inline-block;margin:0 1em .5em 0}
ul.events{font-family:monospace;font-size:90%;padding-left:1em}
@media (max-width:40em){td,th{display:block;border:0}tr{display:block;border-bottom:1px solid #ccc}}
"""

NAV = (("/", "Overview"), ("/clients", "Clients"), ("/lockouts", "Lockouts"),
       ("/reports", "Reports"), ("/audit", "Audit log"))

# (The template escapes text, so the script holds no "<", ">" or "&".)
LIVE_SCRIPT = """
(function(){
  var list=document.getElementById('events');
  if(!window.EventSource||!list)return;
  var source=new EventSource('/events');
  source.onmessage=function(m){
    var e=JSON.parse(m.data),li=document.createElement('li');
    li.textContent=e.time+' '+e.event+' '+(e.client||'')+' '+(e.ip||e.source||'')+' '+(e.reason||'');
    list.insertBefore(li,list.firstChild);
    if(list.children.length===51)list.removeChild(list.lastChild);
  };
  source.onerror=function(){
    if(source.readyState!==EventSource.CLOSED)return;
    var note=document.getElementById('live');
    note.textContent='Live updates stopped (logged out, session over, or the daemon '+
      'restarted): reload the page.';
    note.hidden=false;
  };
})();
"""

# The one script the console sends, allowed by its hash in the pages'
# Content-Security-Policy (not 'unsafe-inline'): markup that ever slipped
# past the escaping still could not run script.
LIVE_SCRIPT_SOURCE = "'sha256-%s'" % base64.b64encode(
    hashlib.sha256(LIVE_SCRIPT.encode("utf-8")).digest()).decode("ascii")


def flatten(tag) -> bytes:
    """
    Render C{tag} now (nothing here waits on anything).
    """
    out = []
    flattenString(None, tag).addBoth(out.append)
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def raw_svg(svg: str) -> list:
    """
    An SVG drawn by L{knocker.console.svg} as template tags (parsed, so it
    is well-formed XML and is flattened like the rest).
    """
    return XMLString(svg).load()


def page(title: str, intro: str, *body, csrf: str | None = None, script: str = "") -> bytes:
    nav = [tags.a(label, href=href) for href, label in NAV]
    if csrf is not None:
        nav.append(tags.form(tags.input(type="hidden", name="csrf", value=csrf),
                             tags.button("Log out", type="submit"),
                             method="post", action="/logout"))
    html = tags.html(
        tags.head(tags.meta(charset="utf-8"),
                  tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
                  tags.title(f"{title} · knocker console"), tags.style(STYLE)),
        tags.body(
            tags.a("Skip to the content", href="#main", class_="skip"),
            tags.header(tags.nav(*nav, **{"aria-label": "pages"})),
            Tag("main")(tags.h1(title), tags.p(intro, class_="intro"), *body, id="main"),
            tags.script(script) if script else "",
        ),
        lang="en",
    )
    return b"<!DOCTYPE html>\n" + flatten(html)


def _table(headers, rows, caption: str) -> Tag:
    return tags.div(tags.table(
        tags.caption(caption),
        tags.thead(tags.tr(*[tags.th(h, scope="col") for h in headers])),
        tags.tbody(*[tags.tr(*[tags.td(cell) for cell in row]) for row in rows]),
    ), class_="scroll")


def _post(action: str, csrf: str, label: str, **fields) -> Tag:
    return tags.form(
        tags.input(type="hidden", name="csrf", value=csrf),
        *[tags.input(type="hidden", name=k, value=v) for k, v in fields.items()],
        tags.button(label, type="submit"),
        method="post", action=action)


def login_page(token: str, problem: str = "") -> bytes:
    form = tags.form(tags.input(type="hidden", name="token", value=token),
                     tags.button("Log in", type="submit", id="login", autofocus="autofocus"),
                     method="post", action="/login")
    body = [tags.p(problem, role="alert")] if problem else []
    if token:
        body.append(form)
    return page("Log in", "This is the knocker console.  Open the URL that 'knocker console' "
                "prints on the server and press Log in; the URL works once, for 5 minutes.",
                *body)


def refused_page(message: str) -> bytes:
    return page("Not logged in", message)


def overview_page(data: dict, events: list, csrf: str) -> bytes:
    slots = [[s["client"], str(s["index"]), s["ip"], s["state"], f"{s['left']} s"]
             for s in data["slots"]]
    locks = [[row["source"], row["scope"], f"{row['left']} s"] for row in data["lockouts"]]
    in_force = data["lockouts_in_force"]
    items = [tags.li(f"{e.get('time', '')} {e.get('event')} {e.get('client', '')} "
                     f"{e.get('ip', e.get('source', ''))} {e.get('reason', '')}")
             for e in reversed(events)]
    return page(
        "Overview",
        "The daemon now: what it guards, who is knocking, who is locked out.  The list of "
        "events at the bottom updates by itself.",
        tags.dl(tags.dt("Up since"), tags.dd(data["started"]),
                tags.dt("Central port"), tags.dd(data["central"]),
                tags.dt("Pool"), tags.dd(f"{data['pool_size']} ports"),
                tags.dt("Pending closes"), tags.dd(str(data["pending_closes"]))),
        tags.h2("Knocks in progress"),
        _table(("client", "knock", "address", "state", "time left"), slots,
               "Granted knocks not finished yet") if slots else tags.p("None."),
        tags.h2("Lockouts in force"),
        _table(("source", "scope", "time left"), locks, "Who cannot knock now")
        if locks else tags.p("None: everyone may knock."),
        tags.p(f"{in_force} in all: ", tags.a("see every lockout", href="/lockouts"))
        if in_force > len(locks) else "",
        tags.h2("Last events"),
        tags.p(id="live", hidden="hidden", role="status"),
        tags.ul(*items, id="events", class_="events", **{"aria-live": "polite"}),
        csrf=csrf, script=LIVE_SCRIPT,
    )


def _pager(number: int, pages: int, link, label: str) -> Tag:
    parts = []
    if number > 1:
        parts.append(tags.a("Previous", href=link(number - 1), rel="prev"))
    parts.append(f" page {number} of {pages} ")
    if number < pages:
        parts.append(tags.a("Next", href=link(number + 1), rel="next"))
    return tags.nav(*parts, **{"aria-label": label})


def invite_form(csrf: str, defaults: dict) -> Tag:
    """Invite: a client name, knocks and expiry, and the Replace box."""
    return tags.form(
        tags.input(type="hidden", name="csrf", value=csrf),
        tags.label("Client name ", tags.input(
            name="client", required="required", size="20", maxlength="64",
            pattern="[a-z0-9][a-z0-9_.\\-]{0,63}", id="invite-client")),
        tags.label(" Knocks ", tags.input(name="knocks", size="6", inputmode="numeric",
                                          placeholder=str(defaults["knocks"]))),
        tags.label(" Code works for ", tags.input(name="expires", size="5",
                                                  placeholder="1h"), " (30m, 1h, 2d)"),
        tags.label(" ", tags.input(type="checkbox", name="replace", value="yes"),
                   " Replace an existing client (its old file stops working)"),
        " ", tags.button("Invite", type="submit", id="invite"),
        method="post", action="/invite", class_="filters")


def clients_page(rows: list, csrf: str, message: str = "", number: int = 1,
                 pages: int = 1, invitations: list = (), defaults: dict | None = None) -> bytes:
    body = []
    if message:
        body.append(tags.p(message, role="status"))
    table_rows = []
    for row in rows:
        action = ("revoked" if row["revoked"] else
                  _post("/revoke", csrf, f"Revoke {row['client']}", client=row["client"]))
        table_rows.append([row["client"], f"{row['left']} of {row['knocks']}",
                           row["last_open"], row["run_out"], action])
    body.append(_table(("client", "knocks left", "last open", "runs out", "revoke"),
                       table_rows, "Clients and their one-time knocks") if rows
                else tags.p("No clients yet: run 'knocker generate CLIENT' on the server."))
    if pages > 1:
        body.append(_pager(number, pages, lambda n: f"/clients?page={n}", "pages of clients"))
    body.append(tags.h2("Invite a client"))
    body.append(tags.p("Makes the client and a one-time code; on the client's machine, "
                       "'knocker enroll CODE --server ...' fetches its file.  The code is "
                       "shown once, on the next page."))
    body.append(invite_form(csrf, defaults or {"knocks": 1000}))
    body.append(tags.h2("Open invitations"))
    body.append(_table(("slot", "client", "expires (UTC)", "time left", "tries left"),
                       [[str(i["slot"]), i["client"], i["expires"], i["left"],
                         str(i["tries_left"])] for i in invitations],
                       "Codes not used yet (their words are never shown again)")
                if invitations else tags.p("None."))
    return page(
        "Clients",
        "Each client's knocks left, its last open, and when it will run out at its recent "
        "rate.  Revoke a client whose file is lost or stolen: its next knock is DENIED.  "
        "When few knocks are left, give it a new file (knocker generate CLIENT --force).  "
        "Invite a new client below.",
        *body, csrf=csrf)


def invited_page(client: str, code: str, command: str, expires: str, knocks: int,
                 csrf: str) -> bytes:
    """The one-time code, shown this once."""
    return page(
        "Invitation made",
        f"Client {client} is created, with {knocks} knocks.  Give its user the command "
        f"below, over a channel you trust (in person, by phone, a signed message).  It works "
        f"once, until {expires} UTC, with 3 tries.  This page is the only time the code is "
        f"shown: it is not kept anywhere you can read it again.",
        tags.p("The code: ", tags.strong(code, id="code")),
        tags.p("On the client's machine, run:"),
        tags.pre(tags.code(command, id="command")),
        tags.p("In place of GATEWAY, put the name or address the client reaches this "
               "server by." if "GATEWAY" in command else
               "If the client reaches this server by another name or address, put that in "
               "place of the host.",
               "  In place of CERTS, put a directory on the client's machine holding, as a "
               ".pem file, the certificate of the CA that signed the central port's "
               "certificate (the certificate itself, if it is self-signed); leave out "
               "':trustRoots=CERTS' if a CA the client's system trusts signed it."
               if "trustRoots=CERTS" in command else "",
               "  Lost the code?  Invite the client again with Replace ticked."),
        tags.p(tags.a("Back to the clients", href="/clients")),
        csrf=csrf)


def problem_page(title: str, message: str, csrf: str, back: str = "/clients") -> bytes:
    """
    Refused for what was asked (not for who asked), with a link back to
    the page it was asked from (C{back}, a path of L{NAV}).
    """
    labels = dict(NAV)
    if back not in labels:
        back = "/"
    return page(title, message, tags.p(tags.a(f"Back to {labels[back]}", href=back)),
                csrf=csrf)


def lockouts_page(rows: list, csrf: str, message: str = "", number: int = 1, pages: int = 1,
                  total: int = 0, find: str = "") -> bytes:
    body = [tags.p(message, role="status")] if message else []
    body.append(tags.form(
        tags.label("Source holding ", tags.input(name="find", value=find, size="24",
                                                 maxlength="64")),
        tags.button("Find", type="submit"), method="get", action="/lockouts",
        class_="filters"))
    if rows:
        body.append(tags.p(f"{total} lockout{'' if total == 1 else 's'} in force"
                           + (f" whose source holds {find!r}" if find else "") + "."))
        body.append(_table(
            ("source", "scope", "reason", "time left", "lift"),
            [[r["source"], r["scope"], r["reason"], f"{r['left']} s",
              _post("/lift", csrf, f"Lift {r['source']}", source=r["source"])] for r in rows],
            "Lockouts in force"))
        if pages > 1:
            query = f"find={quote(find)}&" if find else ""
            body.append(_pager(number, pages, lambda n: f"/lockouts?{query}page={n}",
                               "pages of lockouts"))
        body.append(_post("/lift", csrf, "Lift every lockout", source="all"))
    elif find:
        body.append(tags.p(f"No lockout in force whose source holds {find!r}."))
    else:
        body.append(tags.p("No lockout in force: everyone may knock."))
    return page(
        "Lockouts",
        "Who is refused now, why, and for how long.  A lockout ends by itself; lift it when "
        "you know the source (yourself, after a typo).  Lifting is recorded in the audit log.",
        *body, csrf=csrf)


def reports_page(report, chart_svg: str, table_html: str, bucket: str, since: str,
                 csrf: str) -> bytes:
    totals = report.totals()
    form = tags.form(
        tags.label("Per ", tags.select(
            *[tags.option(b, value=b, **({"selected": "selected"} if b == bucket else {}))
              for b in ("hour", "day")], name="bucket")),
        tags.label(" over the last ", tags.input(name="since", value=since, size="6"),
                   " (e.g. 24h, 7d)"),
        tags.button("Show", type="submit"), method="get", action="/reports", class_="filters")
    return page(
        "Reports",
        "Opens, failures, lockouts, denials and hits per hour or per day, from the audit log "
        "(rotated files included), with the busiest sources and clients.  The same figures "
        "come from 'knocker report'.",
        form,
        tags.p(f"{report.events} events: {totals.opens} opens, {totals.failures} failures, "
               f"{totals.lockouts} lockouts, {totals.denials} denials, {totals.hits} hits."),
        tags.div(*raw_svg(chart_svg), class_="chart"),
        tags.p(tags.a("Download as CSV", href=f"/reports.csv?bucket={bucket}&since={since}")),
        tags.div(*XMLString(f"<div>{table_html}</div>").load()),
        csrf=csrf)


def audit_page(entries: list, total: int, filters: dict, page_number: int, pages: int,
               csrf: str, link) -> bytes:
    fields = [tags.label(label, " ", tags.input(name=name, value=filters.get(name, ""),
                                                size="15"))
              for name, label in (("ip", "Address"), ("client", "Client"), ("event", "Event"),
                                  ("since", "From"), ("until", "To"))]
    form = tags.form(*fields, tags.button("Filter", type="submit"), method="get",
                     action="/audit", class_="filters")
    rows = [[e.get("time", ""), e.get("event", ""), str(e.get("ip", e.get("source", ""))),
             str(e.get("client", "")),
             " ".join(f"{k}={v}" for k, v in e.items()
                      if k not in ("time", "event", "ip", "client", "source"))[:200]]
            for e in entries]
    return page(
        "Audit log",
        "Every event the daemon recorded, newest first.  To answer 'was my address swept "
        "up?', type the address and press Filter.  Times are UTC; From and To take the start "
        "of a time (2026-12-01 or 2026-12-01T13).",
        form, tags.p(f"{total} events match."),
        _table(("time", "event", "address", "client", "details"), rows, "Matching events"),
        _pager(page_number, pages, link, "pages of events"),
        csrf=csrf)
