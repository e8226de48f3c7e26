"""Generic moment kinds declared in rule packs: ``count``, ``distinct``, ``absence`` and ``sequence`` (DESIGN.md §8).

One module per kind (its parameters, validation, per-attempt state, event and wake-up handling, evidence);
``predicates`` compiles the field tests, ``schema`` validates and compiles a pack's generic rules and describes
them, ``dispatch`` holds one journey's rules with their table by event type and the calls the shard makes.
Pure: standard library only.
"""
