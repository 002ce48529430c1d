"""Pure lifecycle logic: inputs, facts, the rule model and the per-customer timeline.
No database, no Kafka: unit-tested on its own."""
