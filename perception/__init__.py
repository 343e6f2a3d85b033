"""Frozen pretrained priors shared by the dataset stages and the serving pipeline.

Every prior has a `full` loader (local weights under $CAMEO_MODELS) and an offline `tiny`
variant that runs anywhere on CPU.
"""
