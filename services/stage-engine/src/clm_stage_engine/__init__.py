"""CLM stage-engine: keeps each customer's lifecycle stage from events, scores and time."""
