"""Pure campaign logic: trigger definitions, conditions, templates, suppression, stats.

No database, no Kafka, no network: everything here is unit-tested without I/O.
"""
