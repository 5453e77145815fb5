"""Prefect tasks: thin adapters from grid cells to the `nst` library and MLflow."""
