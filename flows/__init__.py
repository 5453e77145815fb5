"""Prefect flows: `grid` (run an experiments.yaml grid) and `report` (rebuild its tables)."""
