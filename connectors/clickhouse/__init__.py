"""ClickHouse output: ``sink`` (ClickHouseSink), ``writer`` (its insert thread), ``client`` (DSNs, shared
clients), ``schema`` (tables, DDL, payload) and ``errors`` (transient or permanent, by error code)."""
