"""MLflow "models from code" entry: logged by path, so no pickled object is stored."""

from mlflow.models import set_model

from hyperrec.registry.pyfunc import RetrievalPyfunc

set_model(RetrievalPyfunc())
