"""The inpainting pipeline as an MLflow pyfunc model behind MLflow's scoring app (HTTP)."""
