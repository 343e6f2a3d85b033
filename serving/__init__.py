"""The inpainting pipeline as an MLflow pyfunc model behind `mlflow models serve`."""
