"""Dataset stages: each module holds a pure stage function and its thin Dagster asset."""
