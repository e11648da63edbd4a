-- The Prefect server's database beside MLflow's, in the same PostgreSQL instance (infra/mlflow/compose.yaml).
CREATE DATABASE prefect OWNER franca;
