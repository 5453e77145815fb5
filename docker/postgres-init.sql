-- Prefect and MLflow each keep an `alembic_version` table: they need separate databases.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
