"""What the simulator knows of the default rule pack: journeys, key steps, channels, entries and windows.

A test (tests/unit/test_simulator.py) holds these to flows/rulepacks/default.toml.
"""

from __future__ import annotations

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

SEC_MS = 1_000
MIN_MS = 60 * SEC_MS
HOUR_MS = 60 * MIN_MS

# Parameters of the default rule pack (flows/rulepacks/default.toml); a unit test keeps them in step.
JOURNEYS: dict[str, tuple[str, str, str, str]] = {
    "5g_upgrade": ("landing", "plan_select", "order_form", "payment"),
    "cart": ("product", "cart", "checkout", "payment"),
}
KEY_STEPS: dict[str, frozenset[str]] = {
    "5g_upgrade": frozenset({"order_form", "payment"}),
    "cart": frozenset({"checkout", "payment"}),
}
COMPLETE_TYPE = "complete"
ATTEMPT_TIMEOUT_MS = 24 * HOUR_MS
ABANDON_IDLE_MS = 10 * MIN_MS
STUCK_THRESHOLD = 3
STUCK_WITHIN_MS = 30 * MIN_MS
MAZE_ENTRIES = 3
MAZE_WITHIN_MS = 30 * MIN_MS
HOP_CHANNELS = 3
HOP_WITHIN_MS = 60 * MIN_MS
INTEREST_WITHIN_MS = 24 * HOUR_MS
NO_INTENT_MS = 24 * HOUR_MS
HANDOFF_TYPE = "contact"
HANDOFF_CHANNEL = "call_center"
HANDOFF_WITHIN_MS = 30 * MIN_MS
KINDS = ("abandoned", "failed", "stuck", "maze", "channel_hop", "interested", "handoff")

CHANNELS = ("app", "web", "wechat", "ivr", "sms", "call_center", "store", "email")
DIGITAL = ("app", "web", "wechat")
ENTRIES = ("home_banner", "push_campaign", "search", "sms_link", "wechat_article", "email_offer")
# Entries that come from a campaign, so their first view carries the campaign's name.
CAMPAIGN_ENTRIES = frozenset({"push_campaign", "sms_link", "wechat_article", "email_offer"})
CAMPAIGNS = ("5g_spring", "family_plan", "cart_recovery", "loyalty_week")
FAILS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("5g_upgrade", "order_form"): (("contract_lock", "E117"), ("credit_check", "E201"), ("device_unsupported", "E305")),
    ("5g_upgrade", "payment"): (("card_declined", "P402"), ("3ds_timeout", "P408")),
    ("cart", "checkout"): (("out_of_stock", "S409"), ("address_invalid", "A422")),
    ("cart", "payment"): (("card_declined", "P402"), ("insufficient_funds", "P451")),
}
NOISE_STEPS = ("home", "offers", "support", "account", "bill")
