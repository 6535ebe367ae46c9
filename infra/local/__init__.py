"""The local embedded stack (SeaweedFS, MLflow, Airflow) for development and tests."""
