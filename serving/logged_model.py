"""The served model's code file: `serving.registry.log_model` logs this file as the model
(MLflow's models-from-code), and loading a logged version runs it.

It only names the model class: the code itself is the installed `serving` package, as it is
for every part of cameo, so nothing of the model is pickled.
"""

import mlflow

from serving.model import CameoInpaintModel

mlflow.models.set_model(CameoInpaintModel())
