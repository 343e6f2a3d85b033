"""One dynamic partition per movie; the key is the slug of the file stem (core.layout.slugify)."""

import dagster as dg

movie_partitions = dg.DynamicPartitionsDefinition(name="movies")
