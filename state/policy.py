"""Contact policy: every moment becomes one action (on one channel) or one suppression with its reason.

Decisions use event time: an action's send time is its moment's due time, so caps, gaps and
quiet hours give the same answers in replay, live mode and after a recovery. Only staleness
looks at the processing clock (the wall clock in live mode, the input's event time in replay):
a backlog replayed after an outage is detected late, and its moments are no longer worth acting on.

The hold-out (control) group passes through the same checks as treated customers and is
recorded as a would-be send, so "sent" and "control" decisions are comparable and both arms
see the same caps.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Final

from state.rule_model import MomentRule, Policy, zone

SENT: Final = "sent"
SUPPRESSED: Final = "suppressed"
CONTROL: Final = "control"
# Suppression reasons, in the order they are checked.
REASONS: Final = ("stale", "journey_completed", "stage", "outranked", "quiet_hours", "min_gap", "daily_cap",
                  "weekly_cap", "channel_cap", "no_channel")
HOLDOUT: Final = "holdout"
# The reason of a sent action that broke min_gap (its rule has ``escalate = true``).
ESCALATED: Final = "escalated"
NOT_CHOSEN: Final = "not_chosen"
_URGENCY_RANK: Final = {"P1": 0, "P2": 1, "P3": 2, "P4": 3}
_DAY_MS: Final = 86_400_000
_WEEK_MS: Final = 7 * _DAY_MS
_MAX_TZ_CHARS: Final = 64


class Contact:
    """What the policy remembers of one customer: time zone, recent sends, latest completions.

    Created only for customers with a moment, a completion or a time zone, and immutable: the
    ``remember_*`` functions return a new one. It wraps one flat tuple ``flat``,
    ``(tz, n, send_ts, channel, … n send records …, journey_index, completed_ts, …)``; customers keep it
    packed in their record (``CustomerState.contact``), so this object only lives while a decision runs.
    Sends are in time order and include hold-out would-be sends; completions are the latest per journey.
    """

    __slots__ = ("flat",)

    def __init__(self, flat: tuple[Any, ...]) -> None:
        self.flat = flat

    @staticmethod
    def of(tz: str | None, sends: list[tuple[int, str]], done: list[tuple[int, int]]) -> Contact:
        """Build one from its parts."""
        return Contact((tz, len(sends), *(x for s in sends for x in s), *(x for d in done for x in d)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Contact) and self.flat == other.flat

    def __hash__(self) -> int:
        return hash(self.flat)

    def __repr__(self) -> str:
        return f"Contact({self.flat!r})"

    @property
    def tz(self) -> str | None:
        """The customer's time zone (``attrs.tz`` of an event), if known."""
        tz: str | None = self.flat[0]
        return tz

    def send_records(self) -> list[tuple[int, str]]:
        """Return the sends as (ts, channel) pairs, oldest first."""
        f = self.flat
        return [(f[i], f[i + 1]) for i in range(2, 2 + 2 * f[1], 2)]

    def done_records(self) -> list[tuple[int, int]]:
        """Return the completions as (journey index, ts) pairs."""
        f = self.flat
        return [(f[i], f[i + 1]) for i in range(2 + 2 * f[1], len(f), 2)]

    def completed_at(self, journey_index: int) -> int | None:
        """Return when the customer last completed the journey, if remembered."""
        for j, t in self.done_records():
            if j == journey_index:
                return t
        return None

    def needed_until(self, policy: Policy) -> int:
        """Return the event time after which nothing here can change a decision (for eviction)."""
        f = self.flat
        n = f[1]
        last: int = f[2 * n] + policy.history_ms if n else 0  # the latest send is the last record
        for _j, t in self.done_records():
            last = max(last, t + policy.after_complete_ms)
        return last


def in_holdout(customer_id: str, rule: str, share: float) -> bool:
    """Return whether the customer is in the rule's control group: stable across runs, processes and restarts."""
    if share <= 0:
        return False
    h = hashlib.blake2b(f"{rule}\x00{customer_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") < share * 2**64


def local_minute(ts_ms: int, tz: str | None, default_tz: str) -> int:
    """Return minutes since local midnight of ``ts_ms`` in ``tz`` (an unknown zone falls back to ``default_tz``)."""
    z = zone(tz) if tz else None
    if z is None:
        z = zone(default_tz)
    d = datetime.fromtimestamp(ts_ms / 1000, z)
    return d.hour * 60 + d.minute


def is_quiet(policy: Policy, ts_ms: int, tz: str | None) -> bool:
    """Return whether ``ts_ms`` falls in the quiet hours of the customer's time zone."""
    if policy.quiet is None:
        return False
    start, end = policy.quiet
    m = local_minute(ts_ms, tz, policy.timezone)
    return start <= m < end if start < end else (m >= start or m < end)


def _near(sends: list[tuple[int, str]], t: int, span: int, channel: str | None = None) -> int:
    # Windows are checked on both sides of t: a late event can make a decision out of time order,
    # and every window of length `span` containing t must stay within the cap.
    return sum(1 for s, ch in sends if t - span < s < t + span and (channel is None or ch == channel))


def evaluate(
    policy: Policy,
    rule: MomentRule,
    contact: Contact | None,
    *,
    due_ms: int,
    lag_ms: int,
    stage: int,
    journey_index: int,
    acted_now: bool,
) -> tuple[str, str, str, list[str]]:
    """Decide one moment (before the hold-out split).

    Args:
        policy: The pack's contact policy.
        rule: The moment's rule.
        contact: The customer's contact history (None when there is none).
        due_ms: The moment's due time (= the action's send time).
        lag_ms: How late the decision is, processing clock minus due time.
        stage: The journey attempt's life-cycle stage (index into ``STAGES``).
        journey_index: The journey's index in the pack.
        acted_now: Whether a more urgent moment of this customer was acted on at this instant.

    Returns:
        ``(status, reason, channel, suppressed_channels)``: status ``sent`` or ``suppressed``; a sent one has no
        reason, or ``escalated`` when its rule broke ``min_gap``; suppressed channels as ``"channel:reason"``.
    """
    if lag_ms > rule.act_within_ms:
        return SUPPRESSED, "stale", "", []
    if rule.stages and stage not in rule.stages:
        return SUPPRESSED, "stage", "", []
    if not rule.contact:
        if not rule.channels:
            return SUPPRESSED, "no_channel", "", []
        return SENT, "", rule.channels[0], [f"{ch}:{NOT_CHOSEN}" for ch in rule.channels[1:]]
    sends = contact.send_records() if contact is not None else []
    if contact is not None and policy.after_complete_ms:
        t = contact.completed_at(journey_index)
        if t is not None and 0 <= due_ms - t < policy.after_complete_ms:
            return SUPPRESSED, "journey_completed", "", []
    if acted_now:
        return SUPPRESSED, "outranked", "", []
    if rule.urgency not in policy.quiet_bypass and is_quiet(policy, due_ms, contact.tz if contact else None):
        return SUPPRESSED, "quiet_hours", "", []
    escalated = False
    if policy.min_gap_ms and _near(sends, due_ms, policy.min_gap_ms):
        if not rule.escalate:
            return SUPPRESSED, "min_gap", "", []
        escalated = True
    if policy.max_per_day and _near(sends, due_ms, _DAY_MS) >= policy.max_per_day:
        return SUPPRESSED, "daily_cap", "", []
    if policy.max_per_week and _near(sends, due_ms, _WEEK_MS) >= policy.max_per_week:
        return SUPPRESSED, "weekly_cap", "", []
    status, reason, channel, skipped = _pick_channel(policy, rule, sends, due_ms)
    return status, ESCALATED if escalated and status == SENT else reason, channel, skipped


def _pick_channel(policy: Policy, rule: MomentRule, sends: list[tuple[int, str]],
                  due_ms: int) -> tuple[str, str, str, list[str]]:
    # The first of the rule's channels under its daily channel cap.
    if not rule.channels:
        return SUPPRESSED, "no_channel", "", []
    skipped: list[str] = []
    for i, ch in enumerate(rule.channels):
        cap = policy.channel_caps.get(ch)
        if cap is not None and _near(sends, due_ms, _DAY_MS, ch) >= cap:
            skipped.append(f"{ch}:channel_cap")
            continue
        return SENT, "", ch, skipped + [f"{c}:{NOT_CHOSEN}" for c in rule.channels[i + 1:]]
    return SUPPRESSED, "channel_cap", "", skipped


def remember_send(policy: Policy, contact: Contact | None, t: int, channel: str) -> Contact:
    """Return the history with a send added, dropping what no longer matters to any window."""
    if contact is None:
        return Contact.of(None, [(t, channel)], [])
    keep_from = t - policy.history_ms
    sends = [s for s in contact.send_records() if s[0] > keep_from]
    sends.append((t, channel))
    sends.sort()
    return Contact.of(contact.tz, sends, contact.done_records())


def remember_completion(contact: Contact | None, journey_index: int, t: int) -> Contact:
    """Return the history noting that the customer completed a journey at ``t`` (latest per journey kept)."""
    if contact is None:
        return Contact.of(None, [], [(journey_index, t)])
    done = [d for d in contact.done_records() if d[0] != journey_index]
    done.append((journey_index, t))
    return Contact.of(contact.tz, contact.send_records(), done)


def remember_tz(contact: Contact | None, tz: object) -> Contact | None:
    """Return the history keeping the customer's time zone from an event's ``attrs.tz``, if it names a known zone."""
    if type(tz) is not str or len(tz) > _MAX_TZ_CHARS or (contact is not None and tz == contact.tz) or zone(tz) is None:
        return contact
    if contact is None:
        return Contact.of(tz, [], [])
    return Contact((tz, *contact.flat[1:]))


def order(pending: list[tuple[MomentRule, dict[str, Any], int]]) -> list[tuple[MomentRule, dict[str, Any], int]]:
    """Return competing moments most urgent first (pack order breaks ties)."""
    return sorted(pending, key=lambda p: (_URGENCY_RANK.get(p[0].urgency, 9), p[0].index))


def action_record(
    rule: MomentRule, moment: dict[str, Any], status: str, reason: str, channel: str, skipped: list[str],
    control: bool, detected_at: int,
) -> dict[str, Any]:
    """Return the decision record (``actions`` table; sent ones also go to ``cx.actions``)."""
    acted = status != SUPPRESSED
    return {
        "schema": 1,
        "moment_id": moment["moment_id"],
        "customer_id": moment["customer_id"],
        "rule": rule.name,
        "rule_version": rule.version,
        "kind": rule.kind,
        "journey": rule.journey,
        "urgency": rule.urgency,
        "status": status,
        "reason": reason,
        "channel": channel,
        "template": rule.action,
        "control": 1 if control else 0,
        "suppressed_channels": skipped,
        "due_ts": moment["due_ts"],
        "send_ts": moment["due_ts"] if acted else 0,
        "detected_at": detected_at,
    }
