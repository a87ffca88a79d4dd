"""hyperrec: the plain, framework-free core shared by pipelines, serving and monitoring.

Importing the package sets the process-wide environment TensorFlow Recommenders needs
(legacy Keras) before anything imports TensorFlow; see `hyperrec._env`.
"""

from hyperrec import _env

_env.apply()

__version__ = "0.1.0"
