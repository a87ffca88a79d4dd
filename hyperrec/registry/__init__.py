"""Registry: MLflow runs, model versions and aliases, the pyfunc entry, and deploy (what serves
follows the champion alias)."""
