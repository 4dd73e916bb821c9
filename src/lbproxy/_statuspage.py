# -*- test-case-name: tests.test_statuspage -*-
"""
The HTML status page at C{/} of the C{[admin]} listener.

It is drawn from a status snapshot (the JSON-able dict that
C{GET /api/status} serves, or the merge of the workers' snapshots), never
from the running objects, so that one renderer serves a single process and
the parent of C{workers}.  Every value of the snapshot goes through
L{html.escape}: upstream and backend names come from the configuration,
reasons and health-check results from the backends' answers.

The page needs nothing from elsewhere: its CSS and its script are inline,
allowed by the C{Content-Security-Policy} through their hashes and nothing
else.  The script fetches C{?part=status} (the same page's C{<main>}, drawn
by the same code) every L{REFRESH_SECONDS} and puts it in place of the
old one, so the page refreshes without a reload; without JavaScript a
C{<noscript>} refresh reloads the whole page every
L{NOSCRIPT_REFRESH_SECONDS}, and a link does it by hand.  Fetching the
server's HTML rather than the JSON keeps one renderer (and one place that
escapes) instead of a second one in JavaScript.

Per-second figures are kept by L{RateMeter}: the difference of a counter
between two renderings of the page, over the time between them, read on
an injected clock; nothing runs between requests.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from html import escape
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from twisted.internet.interfaces import IReactorTime

#: How often the page's script fetches fresh figures.
REFRESH_SECONDS = 2

#: How often the page reloads itself when JavaScript is off.
NOSCRIPT_REFRESH_SECONDS = 10

#: The counters of a backend that the page shows per second too.
RATE_COUNTERS = ("requests", "failures")

#: A certificate that expires within this many days is shown as a warning.
CERTIFICATE_WARNING_DAYS = 14

_CSS = """
:root{color-scheme:light dark;--bg:#f6f7f9;--fg:#1d2330;--muted:#667085;
--card:#fff;--line:#e3e6eb;--head:#f0f2f5;--up:#12803c;--down:#c4320a;
--failed:#b54708;--draining:#175cd3;--disabled:#667085;--on-state:#fff}
@media (prefers-color-scheme:dark){:root{--bg:#12151b;--fg:#e6e9ef;
--muted:#98a2b3;--card:#1b2029;--line:#2c3340;--head:#222835;--up:#47cd89;
--down:#f97066;--failed:#fdb022;--draining:#84adff;--disabled:#98a2b3;
--on-state:#12151b}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.25rem 1rem;
padding:.9rem 1.25rem;background:var(--card);border-bottom:1px solid var(--line)}
h1{font-size:1.15rem;margin:0}
header p{margin:0;color:var(--muted);font-size:.85rem}
header a{color:inherit}
body.stale header p::after{content:" \\2014  not updating";color:var(--down)}
main{padding:1rem 1.25rem;max-width:88rem}
section{margin:0 0 1.5rem}
.tiles{display:flex;flex-wrap:wrap;gap:.6rem;margin:0 0 1.25rem}
.tile{background:var(--card);border:1px solid var(--line);border-radius:6px;
padding:.45rem .8rem;min-width:9rem}
.tile small{display:block;font-size:.8rem;color:var(--muted)}
.tile.bad b,.tile.bad small{color:var(--down)}.tile.warn b{color:var(--failed)}
.tile b{display:block;font-size:1.25rem;font-variant-numeric:tabular-nums}
.tile span{font-size:.7rem;text-transform:uppercase;letter-spacing:.03em;
color:var(--muted)}
h2{font-size:1rem;margin:0 0 .5rem;display:flex;flex-wrap:wrap;gap:.5rem;
align-items:baseline}
h2 small{font-weight:normal;color:var(--muted)}
p.source{margin:-.25rem 0 .5rem;font-size:.85rem;color:var(--muted)}
table{width:100%;border-collapse:collapse;background:var(--card);
border:1px solid var(--line);border-radius:6px;overflow:hidden;
table-layout:fixed}
col.c-backend{width:13rem}col.c-weight{width:6.5rem}col.c-active{width:4.5rem}
col.c-requests,col.c-failures{width:7rem}col.c-latency{width:5.5rem}
td{overflow-wrap:anywhere}
th,td{padding:.45rem .6rem;text-align:left;vertical-align:top;
border-top:1px solid var(--line)}
th{background:var(--head);font-size:.75rem;text-transform:uppercase;
letter-spacing:.03em;color:var(--muted);white-space:nowrap;border-top:0}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sub{display:block;font-size:.8rem;color:var(--muted)}
.addr{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:.9rem;word-break:break-all}
.tag{font-size:.7rem;border:1px solid var(--line);border-radius:4px;
padding:0 .3rem;margin-left:.3rem;color:var(--muted)}
.state{display:inline-block;font-weight:600;font-size:.8rem;
padding:.05rem .5rem;border-radius:999px;color:var(--on-state);
background:var(--disabled)}
.s-up{background:var(--up)}.s-down{background:var(--down)}
.s-failed{background:var(--failed)}.s-draining{background:var(--draining)}
tr.r-down td:first-child,tr.r-failed td:first-child{box-shadow:inset 3px 0 var(--down)}
.bad{color:var(--down)}.warn{color:var(--failed)}.ok{color:var(--up)}
.reason{max-width:22rem}
.pw{display:block}.pw+.pw{margin-top:.3rem}
.wn{display:inline-block;min-width:1.6rem;font-size:.7rem;color:var(--muted);
font-variant-numeric:tabular-nums}
.empty{color:var(--muted);font-style:italic}
@media (max-width:760px){
main,header{padding:.75rem}
table,tbody{display:block;width:100%}
thead,colgroup{display:none}
table{border:0;background:none}
tr{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:.4rem .6rem;
background:var(--card);border:1px solid var(--line);border-radius:6px;
margin:0 0 .6rem;padding:.55rem .7rem}
td{display:block;border:0;padding:0}
td.n{text-align:left;white-space:normal}
td.w{grid-column:1/-1}
td.h{grid-column:span 3}
td::before{content:attr(data-label);display:block;font-size:.68rem;
text-transform:uppercase;letter-spacing:.03em;color:var(--muted)}
td.t::before{display:none}
td.t .addr{font-weight:600}
tr.r-down td:first-child,tr.r-failed td:first-child{box-shadow:none}
tr.r-down,tr.r-failed{border-left:4px solid var(--down)}
.reason{max-width:none}
.tile{flex:1 1 40%;min-width:0}
}
"""

_SCRIPT = """
(function(){var busy=false;
function refresh(){if(busy)return;busy=true;
fetch("?part=status",{cache:"no-store"}).then(function(r){
if(!r.ok)throw new Error(r.status);return r.text();}).then(function(t){
var m=document.getElementById("status");var d=document.createElement("div");
d.innerHTML=t;m.replaceWith(d.firstElementChild);
document.body.classList.remove("stale");}).catch(function(){
document.body.classList.add("stale");}).then(function(){busy=false;});}
setInterval(refresh,%d);})();
""" % (REFRESH_SECONDS * 1000)


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


#: Allows the page's own inline style and script, and its fetches of
#: itself; nothing else (no other script, even if a value escaped).
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_hash(_CSS)}; script-src {_hash(_SCRIPT)}; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class RateMeter:
    """
    Counters per second, from the difference between two readings.

    A reading less than L{minimum} seconds after the one kept gives the
    rate found before rather than one over too short a time (two browsers
    refreshing at once); a counter that went down (the pools were rebuilt
    by a reload) starts again without a rate.  Counters not read in a
    rendering are forgotten, so backends that left take no memory.

    Why not a timer sampling the counters: the page is rarely open, and a
    reading per rendering costs nothing while nobody looks.
    """

    def __init__(self, clock: IReactorTime, minimum: float = 1.0) -> None:
        """
        @param clock: gives the time of each reading.
        @param minimum: the shortest time a rate is taken over, in seconds.
        """
        self._clock = clock
        self.minimum = minimum
        self._kept: dict[Any, tuple[float, float, Optional[float]]] = {}

    def rates(self, readings: Mapping[Any, float]) -> dict[Any, Optional[float]]:
        """
        Read counters now.

        @param readings: each counter's current value by a key of the
            caller's choice.
        @return: each key's rate per second, or L{None} when there is no
            earlier reading to compare with yet.
        """
        now = self._clock.seconds()
        kept = self._kept
        result: dict[Any, Optional[float]] = {}
        fresh: dict[Any, tuple[float, float, Optional[float]]] = {}
        for key, value in readings.items():
            before = kept.get(key)
            if before is None or value < before[1]:
                fresh[key] = (now, value, None)
            elif now - before[0] < self.minimum:
                fresh[key] = before
            else:
                fresh[key] = (now, value, (value - before[1]) / (now - before[0]))
            result[key] = fresh[key][2]
        self._kept = fresh
        return result


_DOT = " \u00b7 "
_NUMERIC = ' class="n"'


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


#: The key under which the merged snapshot of C{workers} mode
#: (C{lbproxy._workeradmin}) gives a value that differs between workers:
#: C{{"per_worker": {"0": VALUE, "1": VALUE}}}.
PER_WORKER = "per_worker"


def _byWorker(value: Any) -> Optional[dict[str, Any]]:
    """
    The values by worker number of a value that differs between workers,
    or L{None} for a value that does not.
    """
    if isinstance(value, Mapping) and isinstance(value.get(PER_WORKER), Mapping):
        return dict(value[PER_WORKER])
    return None


def _workersOf(
    record: Mapping[str, Any], keys: Sequence[str]
) -> Optional[list[tuple[str, dict[str, Any]]]]:
    """
    When some of C{keys} of C{record} differ between workers: each
    worker's number with its own C{keys}; else L{None}.
    """
    split = {k: _byWorker(record.get(k)) for k in keys}
    numbers: dict[str, None] = {}
    for values in split.values():
        if values is not None:
            numbers.update(dict.fromkeys(values))
    if not numbers:
        return None
    workers = []
    for n in numbers:
        own = {}
        for k, values in split.items():
            own[k] = record.get(k) if values is None else values.get(n)
        workers.append((n, own))
    return workers


def _each(value: Any, draw: Any) -> str:
    """
    C{draw(value)}, or for a value that differs between workers, each
    worker's drawn, under its number.
    """
    split = _byWorker(value)
    if split is None:
        result: str = draw(value)
        return result
    return "".join(
        f'<span class="pw"><span class="wn">w{_e(n)}</span> {draw(v)}</span>'
        for n, v in split.items()
    )


def _count(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:,.0f}"
    return "\u2013"


def _rate(value: Optional[float]) -> str:
    if value is None:
        return "\u2013/s"
    if value and value < 10:
        return f"{value:.1f}/s"
    return f"{value:,.0f}/s"


def _milliseconds(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "\u2013"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def _duration(seconds: float) -> str:
    """
    A short human duration: C{42s}, C{3m 05s}, C{2h 07m}, C{3d 04h}.
    """
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _utc(when: float) -> str:
    stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(when: Any, now: float) -> str:
    """
    C{<time>} markup for a moment of the snapshot: how long ago, with the
    date and time in its C{title}.
    """
    if not isinstance(when, (int, float)):
        return ""
    return f'<time title="{_e(_utc(when))}">{_e(_duration(now - when))} ago</time>'


def _cell(label: str, content: str, numeric: bool = False, extra: str = "") -> str:
    """
    A table cell; C{label} names it where a narrow screen shows each row
    as a card (where the classes of C{extra} place it: C{w} the card's
    whole width, C{t} without its label, C{h} three quarters).
    """
    classes = " ".join(c for c in ("n" if numeric else "", extra) if c)
    attribute = f' class="{classes}"' if classes else ""
    return f'<td data-label="{_e(label)}"{attribute}>{content}</td>'


#: The columns of an upstream's table: title, whether numeric, the class
#: of its C{<col>} (which sets its width, the same in every table).
_COLUMNS: Sequence[tuple[str, bool, str]] = (
    ("Backend", False, "c-backend"),
    ("State", False, "c-state"),
    ("Weight", True, "c-weight"),
    ("Active", True, "c-active"),
    ("Requests", True, "c-requests"),
    ("Failures", True, "c-failures"),
    ("Latency", True, "c-latency"),
    ("Health check", False, "c-health"),
)


#: The keys of a backend's C{health} that the page shows.
_HEALTH_KEYS = ("last_result", "last_passed", "last_latency", "last_time")

#: States in the order a row takes the first of (when workers differ).
_STATE_ORDER = ("down", "failed", "draining", "disabled", "up")


def _health(check: Any, now: float) -> str:
    """
    The latest active health check of a backend: its C{health} in the
    snapshot (L{None} without active checks).
    """
    if not isinstance(check, Mapping):
        return '<span class="empty">no active checks</span>'
    workers = _workersOf(check, _HEALTH_KEYS)
    if workers is not None:
        return "".join(
            f'<span class="pw"><span class="wn">w{_e(n)}</span> {_health(own, now)}</span>'
            for n, own in workers
        )
    if not check.get("last_result"):
        return '<span class="empty">not checked yet</span>'
    verdict, _, detail = str(check["last_result"]).partition(": ")
    passed = check.get("last_passed")
    css = "ok" if passed is True else ("bad" if passed is False else "")
    details = [
        part
        for part in (
            _milliseconds(check["last_latency"])
            if check.get("last_latency") is not None
            else "",
            _ago(check.get("last_time"), now),
        )
        if part
    ]
    return (
        f'<span class="{css}">{_e(verdict)}</span>'
        + (f" {_e(detail)}" if detail else "")
        + (f'<span class="sub">{_DOT.join(details)}</span>' if details else "")
    )


def _state(backend: Mapping[str, Any], now: float) -> str:
    """
    A backend's state, with its reason and since when.
    """
    since = backend.get("since")
    sinceText = (
        f"since {_ago(since, now)}" if isinstance(since, (int, float)) else "since start"
    )
    state = str(backend.get("state", "unknown"))
    return (
        f'<span class="state s-{_e(state)}">{_e(state)}</span>'
        f'<span class="sub reason">{_e(backend.get("reason", ""))}</span>'
        f'<span class="sub">{sinceText}</span>'
    )


def _effective(weight: Any) -> str:
    return _e(f"{weight:g}" if isinstance(weight, (int, float)) else weight)


def _backendRow(backend: Mapping[str, Any], rates: Mapping[str, Optional[float]], now: float) -> str:
    workers = _workersOf(backend, ("state", "reason", "since"))
    if workers is None:
        states = [str(backend.get("state", "unknown"))]
        stateCell = _state(backend, now)
    else:
        states = [str(own["state"]) for _, own in workers]
        stateCell = "".join(
            f'<span class="pw"><span class="wn">w{_e(n)}</span> {_state(own, now)}</span>'
            for n, own in workers
        )
    rowState = next((s for s in _STATE_ORDER if s in states), states[0])
    tags = "".join(
        f'<span class="tag">{_e(t)}</span>'
        for t in (
            "backup" if backend.get("backup") else "",
            "https" if str(backend.get("url", "")).startswith("https:") else "",
        )
        if t
    )
    failureRate = rates.get("failures")
    cells = [
        _cell(
            "Backend",
            f'<span class="addr">{_e(backend.get("name", "?"))}</span>{tags}',
            extra="w t",
        ),
        _cell("State", stateCell, extra="w t"),
        _cell(
            "Weight",
            f'{_each(backend.get("weight"), _e)}<span class="sub">effective '
            f'{_each(backend.get("effective_weight"), _effective)}</span>',
            numeric=True,
        ),
        _cell("Active", _count(backend.get("active")), numeric=True),
        _cell(
            "Requests",
            f'{_count(backend.get("requests"))}<span class="sub">{_rate(rates.get("requests"))}</span>',
            numeric=True,
        ),
        _cell(
            "Failures",
            f'{_count(backend.get("failures"))}<span class="sub">{_rate(failureRate)}</span>',
            numeric=True,
            extra="bad" if failureRate else "",
        ),
        _cell(
            "Latency", _each(backend.get("last_latency"), _milliseconds), numeric=True
        ),
        _cell(
            "Health check",
            _health(backend["health"], now) if "health" in backend else "\u2013",
            extra="h",
        ),
    ]
    return f'<tr class="r-{_e(rowState)}">{"".join(cells)}</tr>'


def _plural(count: Any, one: str, many: str) -> str:
    """
    C{count} (as L{_count} writes it) and the noun that goes with it.
    """
    return f"{_count(count)} {one if count == 1 else many}"


def _inWorkers(
    record: Mapping[str, Any],
    keys: Sequence[str],
    draw: Callable[[Mapping[str, Any]], str],
) -> str:
    """
    C{draw(record)}; or, where some of C{keys} of C{record} differ between
    workers, each worker's drawn in turn, after its number, on one line.
    """
    workers = _workersOf(record, keys)
    if workers is None:
        return draw(record)
    return _DOT.join(
        f'<span class="wn">w{_e(n)}</span> {draw(own)}' for n, own in workers
    )


#: The keys of a C{resolve} line's status (in a DNS source) that the page
#: shows.
_LINE_KEYS = ("addresses", "last_answer", "error")


def _resolveLine(line: Mapping[str, Any], now: float) -> str:
    """
    What a C{resolve} line has: its backends and the age of its latest
    good answer, and why its latest lookup failed if it did.
    """

    def draw(own: Mapping[str, Any]) -> str:
        answered = own.get("last_answer")
        error = own.get("error")
        parts = []
        if isinstance(answered, (int, float)):
            parts.append(
                f'{_plural(own.get("addresses"), "address", "addresses")}, '
                f"answered {_ago(answered, now)}"
            )
        if error is not None:
            keeping = "keeping the last answer" if parts else "no answer yet"
            parts.append(f'<span class="warn">lookup failed: {_e(error)}</span>, {keeping}')
        return "; ".join(parts) or "not answered yet"

    name = f'<span class="addr">{_e(line.get("name", "?"))}</span>'
    return f"{name} ({_inWorkers(line, _LINE_KEYS, draw)})"


#: The keys of an etcd source that the page shows once per worker where
#: they differ.
_ETCD_KEYS = ("revision", "endpoint", "watching", "error", "keys", "rejected")


def _etcd(source: Mapping[str, Any]) -> str:
    """
    Where an etcd source is (prefix, revision, endpoint, watch), its keys,
    and its reads, events and failures.
    """

    def draw(own: Mapping[str, Any]) -> str:
        revision = own.get("revision")
        error = own.get("error")
        if own.get("watching"):
            watch = "watching"
        else:
            watch = '<span class="warn">not watching' + (
                f": {_e(error)}</span>" if error is not None else "</span>"
            )
        rejected = own.get("rejected")
        return (
            (f"at revision {_e(revision)}" if revision else "not read yet")
            + f' via <span class="addr">{_e(own.get("endpoint", "?"))}</span>, {watch}; '
            + _plural(own.get("keys"), "key", "keys")
            + (f' <span class="warn">({_count(rejected)} rejected)</span>' if rejected else "")
        )

    return (
        f'Backends from etcd <span class="addr">{_e(source.get("prefix", "?"))}</span> '
        f"{_inWorkers(source, _ETCD_KEYS, draw)}; "
        f'{_plural(source.get("reads"), "read", "reads")}, '
        f'{_plural(source.get("events"), "event", "events")}, '
        f'{_plural(source.get("failures"), "failure", "failures")}'
    )


def _source(upstream: Mapping[str, Any], now: float) -> str:
    """
    The line under an upstream's heading that says where its backends come
    from (its C{source}: DNS or etcd) and how that is going; nothing for
    an upstream with fixed servers.
    """
    source = upstream.get("source")
    if not isinstance(source, Mapping):
        return ""
    if source.get("kind") == "dns":
        lines = ", ".join(_resolveLine(line, now) for line in source.get("lines", ()))
        text = (
            f"Backends from DNS: {lines or 'no resolve lines'}; "
            f'{_plural(source.get("lookups"), "lookup", "lookups")}, '
            f'{_count(source.get("lookup_failures"))} failed'
        )
    elif source.get("kind") == "etcd":
        text = _etcd(source)
    else:
        return ""
    return f'<p class="source">{text}</p>'


def _changes(upstream: Mapping[str, Any]) -> str:
    """
    The backends that joined and left an upstream while it ran, for its
    heading; nothing when none did.
    """
    added = upstream.get("backends_added") or 0
    removed = upstream.get("backends_removed") or 0
    if not (added or removed):
        return ""
    return (
        f"<small>{_plural(added, 'backend', 'backends')} added, "
        f"{_count(removed)} removed</small>"
    )


def _upstream(
    upstream: Mapping[str, Any],
    rates: Mapping[tuple[str, str, str], Optional[float]],
    now: float,
) -> str:
    name = str(upstream.get("name", "?"))
    backends = list(upstream.get("backends", ()))
    up = sum(1 for b in backends if b.get("state") == "up")
    columns = "".join(f'<col class="{c}">' for _, _, c in _COLUMNS)
    head = "".join(
        f'<th{_NUMERIC if numeric else ""} scope="col">{_e(title)}</th>'
        for title, numeric, _ in _COLUMNS
    )
    rows = "".join(
        _backendRow(
            b,
            {c: rates.get((name, str(b.get("name")), c)) for c in RATE_COUNTERS},
            now,
        )
        for b in backends
    )
    if not rows:
        rows = f'<tr><td colspan="{len(_COLUMNS)}" class="empty w t">no backends</td></tr>'
    if not backends:
        summaryClass = ""
    else:
        summaryClass = "ok" if up == len(backends) else ("bad" if up == 0 else "warn")
    return (
        f'<section data-upstream="{_e(name)}"><h2>{_e(name)} '
        f'<small class="{summaryClass}">{up} of {len(backends)} up</small>'
        f"{_changes(upstream)}</h2>{_source(upstream, now)}"
        f"<table><colgroup>{columns}</colgroup><thead><tr>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _certificates(certificates: Iterable[Mapping[str, Any]], now: float) -> str:
    rows = []
    for certificate in certificates:
        notAfter = certificate.get("not_after_timestamp")
        if isinstance(notAfter, (int, float)):
            left = notAfter - now
            css = "bad" if left <= 0 else (
                "warn" if left < CERTIFICATE_WARNING_DAYS * 86400 else "ok"
            )
            expiry = (
                f'<span class="{css}">{_e(_utc(notAfter))}</span>'
                f'<span class="sub">{"expired" if left <= 0 else "in " + _e(_duration(left))}</span>'
            )
        else:
            expiry = '<span class="empty">unknown</span>'
        names = certificate.get("names") or ()
        rows.append(
            "<tr>"
            + _cell(
                "Names",
                _e(", ".join(str(n) for n in names)) or '<span class="empty">none</span>',
                extra="w",
            )
            + _cell(
                "File", f'<span class="addr">{_e(certificate.get("file", ""))}</span>', extra="w"
            )
            + _cell("Expires", expiry, extra="w")
            + "</tr>"
        )
    if not rows:
        return ""
    return (
        '<section data-certificates=""><h2>TLS certificates</h2><table><thead><tr>'
        '<th scope="col">Names</th><th scope="col">File</th><th scope="col">Expires</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


#: The key in L{readings} of the requests of every vhost (and of none).
TOTAL_REQUESTS = ("", "", "requests")

#: The key in L{readings} of the 5xx answers of every vhost (and of none).
TOTAL_5XX = ("", "", "5xx")


def _clientCounts(snapshot: Mapping[str, Any]) -> tuple[float, float]:
    """
    The client requests of a snapshot, and those answered with a 5xx: of
    every vhost and of none.
    """
    groups = [*snapshot.get("vhosts", ()), snapshot.get("unrouted") or {}]
    requests = sum(g.get("requests", 0) for g in groups)
    errors = sum((g.get("responses_by_class") or {}).get("5xx", 0) for g in groups)
    return requests, errors


def _workers(workers: Any) -> str:
    """
    The per-worker breakdown of a merged snapshot (C{workers} mode): each
    worker's process id and whether it answered, with its own figures.
    """
    if not isinstance(workers, list) or not workers:
        return ""
    rows = []
    for worker in workers:
        if not isinstance(worker, Mapping):
            continue
        answer = worker.get("answer")
        if worker.get("answered") and isinstance(answer, Mapping):
            status = '<span class="state s-up">answering</span>'
            requests: Any = _clientCounts(answer)[0] if "vhosts" in answer else None
            figures = [answer.get("connections"), answer.get("active_requests"), requests]
        else:
            status = (
                '<span class="state s-down">not answering</span>'
                f'<span class="sub reason">{_e(worker.get("error") or "")}</span>'
            )
            figures = [None, None, None]
        pid = worker.get("pid")
        rows.append(
            f'<tr class="r-{"up" if worker.get("answered") else "down"}">'
            + _cell("Worker", f'<span class="addr">{_e(worker.get("worker", "?"))}</span>', extra="t")
            + _cell("PID", _e(pid) if pid is not None else "\u2013", numeric=True)
            + _cell("Status", status, extra="w")
            + "".join(
                _cell(label, _count(value), numeric=True)
                for label, value in zip(("Connections", "In flight", "Requests"), figures)
            )
            + "</tr>"
        )
    head = "".join(
        f'<th{_NUMERIC if numeric else ""} scope="col">{title}</th>'
        for title, numeric in (
            ("Worker", False),
            ("PID", True),
            ("Status", False),
            ("Connections", True),
            ("In flight", True),
            ("Requests", True),
        )
    )
    return (
        '<section data-workers=""><h2>Workers</h2><table>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def readings(snapshot: Mapping[str, Any]) -> dict[tuple[str, str, str], float]:
    """
    The counters of a snapshot that the page shows per second, for
    L{RateMeter.rates}: each backend's by C{(upstream, backend, counter)},
    and the client requests and 5xx answers in total (L{TOTAL_REQUESTS},
    L{TOTAL_5XX}) when the snapshot has vhosts.
    """
    readings = {}
    if "vhosts" in snapshot:
        readings[TOTAL_REQUESTS], readings[TOTAL_5XX] = _clientCounts(snapshot)
    for upstream in snapshot.get("upstreams", ()):
        for backend in upstream.get("backends", ()):
            for counter in RATE_COUNTERS:
                value = backend.get(counter)
                if isinstance(value, (int, float)):
                    readings[(str(upstream.get("name")), str(backend.get("name")), counter)] = value
    return readings


def _tile(label: str, value: str, sub: str = "", css: str = "") -> str:
    cls = f"tile {css}" if css else "tile"
    return f'<div class="{cls}"><span>{_e(label)}</span><b>{value}</b>{sub}</div>'


def _overview(
    snapshot: Mapping[str, Any],
    rates: Mapping[tuple[str, str, str], Optional[float]],
    now: float,
) -> str:
    """
    The figures of the whole process over the tables: connections,
    requests in flight, client requests and 5xx answers, reloads.
    """
    tiles = []
    if "connections" in snapshot:
        refused = snapshot.get("connections_refused") or 0
        tiles.append(
            _tile(
                "Connections",
                _count(snapshot["connections"]),
                f'<small class="bad">{_count(refused)} refused</small>' if refused else "",
            )
        )
    if "active_requests" in snapshot:
        tiles.append(_tile("In flight", _count(snapshot["active_requests"])))
    if "vhosts" in snapshot:
        requests, errors = _clientCounts(snapshot)
        tiles.append(
            _tile("Requests", _count(requests), f"<small>{_rate(rates.get(TOTAL_REQUESTS))}</small>")
        )
        errorRate = rates.get(TOTAL_5XX)
        tiles.append(
            _tile(
                "5xx answers",
                _count(errors),
                f"<small>{_rate(errorRate)}</small>",
                "bad" if errorRate else "",
            )
        )
    if "reloads" in snapshot:
        failures = snapshot.get("reload_failures") or 0
        loaded = snapshot.get("config_loaded")
        notes = []
        if failures:
            notes.append(f"{_count(failures)} refused")
        if isinstance(loaded, (int, float)):
            notes.append(f"loaded {_ago(loaded, now)}")
        tiles.append(
            _tile(
                "Reloads",
                _count(snapshot["reloads"]),
                f"<small>{_DOT.join(notes)}</small>" if notes else "",
                "" if snapshot.get("last_reload_ok", True) else "warn",
            )
        )
    return f'<div class="tiles">{"".join(tiles)}</div>' if tiles else ""


def renderStatus(
    snapshot: Mapping[str, Any],
    rates: Mapping[tuple[str, str, str], Optional[float]],
    now: float,
) -> str:
    """
    The C{<main>} of the page: a table per upstream, then the
    certificates.

    @param snapshot: the status snapshot.
    @param rates: per-second figures, as L{RateMeter.rates} gives them for
        L{readings}.
    @param now: the time (seconds since the epoch) that ages are counted
        to.
    """
    upstreams = "".join(_upstream(u, rates, now) for u in snapshot.get("upstreams", ()))
    if not upstreams:
        upstreams = '<p class="empty">No upstreams are configured.</p>'
    return (
        f'<main id="status" data-time="{_e(now)}">{_overview(snapshot, rates, now)}'
        f"{upstreams}"
        f"{_certificates(snapshot.get('certificates', ()), now)}"
        f"{_workers(snapshot.get('workers'))}"
        f'<p class="sub">Figures of {_e(_utc(now))}.</p></main>'
    )


def renderPage(
    snapshot: Mapping[str, Any],
    rates: Mapping[tuple[str, str, str], Optional[float]],
    now: float,
) -> str:
    """
    The whole page: L{renderStatus} with its head, style and script.
    """
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>lbproxy status</title>"
        f'<noscript><meta http-equiv="refresh" content="{NOSCRIPT_REFRESH_SECONDS}"></noscript>'
        f"<style>{_CSS}</style></head><body>"
        '<header><h1>lbproxy status</h1>'
        f"<p>Updates every {REFRESH_SECONDS}s \u00b7 "
        '<a href="./" id="reload">reload</a> \u00b7 '
        '<a href="api/status">JSON</a></p></header>'
        f"{renderStatus(snapshot, rates, now)}"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


class StatusPage:
    """
    Answers C{GET /} of the admin listener with the page, and
    C{GET /?part=status} with its C{<main>} for the page's own refresh.
    """

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: tells the time the page shows and its rates are
            taken over.
        """
        self._clock = clock
        self.rateMeter = RateMeter(clock)

    def render(self, request: Any, snapshot: Mapping[str, Any]) -> bytes:
        """
        Set the headers of C{request} and return the body.

        @param snapshot: the status snapshot to show.
        """
        rates = self.rateMeter.rates(readings(snapshot))
        now = self._clock.seconds()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        if request.args.get(b"part") == [b"status"]:
            text = renderStatus(snapshot, rates, now)
        else:
            text = renderPage(snapshot, rates, now)
        return text.encode("utf-8")
