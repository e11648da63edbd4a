"""MLflow "models from code" entry of the registered model: names the pyfunc class, nothing else.

MLflow copies this file into the model and executes it at load time (``mlflow.models.set_model``), instead of
unpickling a PythonModel instance; the class and its loader live in ``tasks.common.pyfunc_model``.
"""

from mlflow.models import set_model

from tasks.common.pyfunc_model import FrancaFeatures

set_model(FrancaFeatures())
