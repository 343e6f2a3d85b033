"""One dynamic partition per movie; the key is the slug of the file stem (assets.layout.slugify)."""

import dagster as dg

movie_partitions = dg.DynamicPartitionsDefinition(name="movies")
