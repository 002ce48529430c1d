"""Pure ingest rules: what a request may publish, Segment mapping, rate limits. No I/O."""
