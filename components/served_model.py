"""The served model as an MLflow models-from-code file: `mlflow.pyfunc.log_model` logs this file, not a pickle.

MLflow runs it when the model is logged and again at every load, with the logged `vidops` package (holding
`components/` alone) on `sys.path`; it only names the model, which lives in `vidops.components.serving`.
"""

import mlflow

from vidops.components.serving import VideoModel

mlflow.models.set_model(VideoModel())
