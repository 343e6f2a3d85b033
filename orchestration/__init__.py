"""Dagster definitions, resources, sensors and the `cameo` command line."""
