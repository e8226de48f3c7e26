"""``moments lookup ID`` and ``moments explain MOMENT_ID``: a running worker's look-up API, printed for a person.

They ask the worker's HTTP API (``--url``, ``CX_LOOKUP_URL``; default the local worker) rather than
ClickHouse: on the embedded default the worker holds the chDB path, and only it knows the live state.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import orjson

from flows.config import DEFAULT_METRICS_PORT, ConfigError, RunError
from flows.http_token import TOKEN_ENV, http_token

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_METRICS_PORT}"
URL_ENV = "CX_LOOKUP_URL"
RETRY_FOR_S: Final = 60.0  # how long a command waits, in all, on a worker that answers 429 (a report runs)


def add_lookup_args(p: argparse.ArgumentParser) -> None:
    """The options ``lookup`` and ``explain`` share."""
    p.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL),
                   help=f"the worker's HTTP endpoint (default {DEFAULT_URL}; {URL_ENV}); {TOKEN_ENV} is sent as "
                        "the bearer token when set")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")


def fetch(url: str, path: str) -> dict[str, Any]:
    """GET ``path`` from the worker at ``url`` and return its JSON answer.

    Raises:
        ConfigError: the URL is not http(s).
        RunError: the worker is unreachable or refuses (status 1; the message says why, never the id).
    """
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url ({URL_ENV})", f"must start with http:// or https://, got {_shown(url)!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises for a port that is not a number 0..65535
    except ValueError as e:
        raise ConfigError(f"--url ({URL_ENV})", f"is not a URL ({e}): {_shown(url)!r}") from None
    if not parts.hostname:
        raise ConfigError(f"--url ({URL_ENV})", f"names no host: {_shown(url)!r}")
    # Imported here: `moments run` builds its parser from this module and never fetches (urllib.request pulls in
    # http.client, email and ssl: ≈50 ms of its start-up).
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    shown = _shown(url)
    req = Request(url.rstrip("/") + path)  # noqa: S310 - http(s) checked above
    token = http_token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    waited = 0.0
    while True:
        try:
            with urlopen(req, timeout=30) as r:  # noqa: S310 - http(s) checked above
                return orjson.loads(r.read())  # type: ignore[no-any-return]
        except HTTPError as e:
            # 429: a report runs, or one just ended (the worker spaces them); wait as told, a minute at most.
            wait = _retry_after(e.headers.get("Retry-After")) if e.code == 429 else None
            if wait is None or waited + wait > RETRY_FOR_S:
                _refused(shown, e)
            e.close()
            time.sleep(wait)
            waited += wait
        except (OSError, ValueError) as e:
            raise RunError(f"{shown}: no answer from a worker ({getattr(e, 'reason', e)}); is `moments run` running "
                           f"with its HTTP port there? (--url, {URL_ENV})") from None


def _retry_after(value: str | None) -> float:
    """Seconds a ``Retry-After`` asks for (delay-seconds form), 2 when absent or not a number."""
    try:
        return min(max(float(value or 2), 0.1), RETRY_FOR_S)
    except ValueError:
        return 2.0


def _refused(shown: str, e: Any) -> NoReturn:
    """Raise the RunError for a worker's refusal (an ``HTTPError``): status 4 when it could not answer now."""
    try:
        problem = orjson.loads(e.read()).get("error", "")
    except ValueError:
        problem = ""
    if e.code == 401:
        problem = f"the worker requires a token: set {TOKEN_ENV} ({problem})"
    if e.code in (429, 502, 503, 504):
        # Not "unknown": the worker could not answer (yet); status 4 lets a script retry.
        raise RunError(f"{shown}: HTTP {e.code}: no answer now, retry: {problem}", 4) from None
    raise RunError(f"{shown}: HTTP {e.code}: {problem}", 1 if e.code != 404 else 3) from None


def _shown(url: str) -> str:
    """The URL without a user name or password (they are secrets: never printed)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}" if "@" in netloc else url


def _t(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def format_customer(d: dict[str, Any]) -> list[str]:
    """The look-up of a customer as lines for a person."""
    lines = [f"customer {d['customer_id']} (last seen {_t(d['last_seen'])} UTC, process {d['process']})"]
    if d.get("held") is False:
        lines.append("not held by the worker any more (evicted): its journeys, moments and context as stored")
    lines.append("journeys:" if d["journeys"] else "journeys: none")
    for j in d["journeys"]:
        channels = ", ".join(j["channels"]) or "-"
        lines.append(f"  {j['journey']:<12} {j['status']:<9} stage {j['stage']:<9} at {j['step'] or '-':<12} "
                     f"since {_t(j['updated_at'])}  entry {j['entry'] or '-'}  channels {channels}"
                     f"  (attempt {j['attempt']})")
    lines.append("tags:" if d["tags"] else "tags: none")
    for t in d["tags"]:
        lines.append(f"  {t['tag']:<24} {t['state']:<9} opened {_t(t['opened_ts'])}  expires {_t(t['expires_at'])}")
    for s in d.get("sends", []):
        lines.append(f"  sent via {s['channel']} at {_t(s['ts'])}")
    if "history" in d:
        lines.append(f"history: {d['history']}")
    lines.append(f"moments (latest {len(d['moments'])}):" if d["moments"] else "moments: none")
    for m in d["moments"]:
        dec = m.get("decision") or {}
        what = (f"{dec.get('status')} ({dec.get('reason') or dec.get('channel') or '-'})" if dec else "undecided")
        lines.append(f"  {_t(m['due_ts'])}  {m['rule']:<24} {m['urgency']}  {what}  {m['moment_id']}")
    ctx = d.get("context")
    if ctx:
        lines.append(f"hand-off context ({ctx['journey']}, contact {_t(ctx['contact_ts'])}):")
        for k, v in ctx.items():
            if k not in ("schema", "customer_id", "journey", "contact_ts"):
                lines.append(f"  {k}: {v}")
    else:
        lines.append("hand-off context: none")
    return lines


def format_explanation(d: dict[str, Any]) -> list[str]:
    """The explanation of a moment as lines for a person."""
    m, r = d["moment"], d["rule"]
    lines = [f"moment {m['moment_id']}: {m['rule']} v{m['rule_version']} ({m['kind']}, {m['urgency']}) for customer "
             f"{m['customer_id']}, due {_t(m['due_ts'])} UTC at step {m['step'] or '-'}"]
    if r.get("known", True):
        lines.append(f"rule: {r['summary']}")
        lines.append("parameters: " + ", ".join(f"{k}={v}" for k, v in r["parameters"].items()))
        if r["running_version"] != r["version"]:
            lines.append(f"  (the worker now runs version {r['running_version']} of this rule)")
    else:
        lines.append("rule: not in the worker's rule pack any more")
    lines.append("evidence:")
    for e in d["evidence"]:
        if e.get("stored") is False:
            lines.append(f"  {e['event_id']}: not stored (older than the events table keeps, or stored elsewhere)")
        else:
            lines.append(f"  {_t(e['ts'])}  {e['type']:<8} {e['channel']:<11} {e['journey'] or '-'}/{e['step'] or '-'}"
                         f"  entry {e['entry'] or '-'}  {orjson.dumps(e['attrs']).decode() if e['attrs'] else ''}"
                         f"  ({e['event_id']})")
    lines.append("steps around it:")
    for s in d["steps"]:
        mark = "*" if s["ts"] <= m["due_ts"] else " "
        lines.append(f" {mark} {_t(s['ts'])}  {s['step']:<14} via {s['channel']:<11} entry {s['entry'] or '-'}")
    dec = d.get("decision")
    if dec:
        lines.append(f"decision: {dec['status']}, reason {dec['reason'] or '-'}, channel {dec['channel'] or '-'}"
                     + (f", suppressed channels {', '.join(dec['suppressed_channels'])}"
                        if dec["suppressed_channels"] else "") + (" (hold-out control)" if dec["control"] else ""))
    else:
        lines.append("decision: none stored yet")
    return lines


def _json_escape(c: str) -> str:
    n = ord(c)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000  # beyond the BMP JSON escapes a UTF-16 surrogate pair (\\u plus five digits means another text)
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def printable(text: str, json: bool = False) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``; in JSON ``\\u001b``, still valid JSON).

    Event data (ids, steps, entry points, attributes) reaches the terminal: an ESC or BEL in it would be run by
    the terminal (move the cursor, rewrite the screen, change the title) rather than shown.
    """
    if text.isprintable():
        return text
    if json:
        return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print(d: dict[str, Any], as_json: bool, lines: list[str] | None) -> None:
    if as_json or lines is None:
        print(printable(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode(), json=True))
    else:
        print("\n".join(printable(line) for line in lines))


def cmd_lookup(a: argparse.Namespace) -> int:
    """``moments lookup CUSTOMER_ID``."""
    d = fetch(a.url, "/v1/customers/" + urllib.parse.quote(a.customer_id, safe=""))
    _print(d, a.json, None if a.json else format_customer(d))
    return 0


def cmd_explain(a: argparse.Namespace) -> int:
    """``moments explain MOMENT_ID``."""
    d = fetch(a.url, "/v1/moments/" + urllib.parse.quote(a.moment_id, safe=""))
    _print(d, a.json, None if a.json else format_explanation(d))
    return 0
