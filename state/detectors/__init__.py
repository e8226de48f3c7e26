"""One module per moment kind; each is a pure function over an ``Attempt`` and an event.

Kinds are numbered by ``KIND_BITS`` for the attempt's ``fired`` bitmask.
"""

from __future__ import annotations

from state.rules import KINDS

KIND_BITS: dict[str, int] = {k: 1 << i for i, k in enumerate(KINDS)}
