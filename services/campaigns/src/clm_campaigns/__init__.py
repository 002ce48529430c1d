"""CLM campaigns: fires personalised actions on stage transitions and events."""
