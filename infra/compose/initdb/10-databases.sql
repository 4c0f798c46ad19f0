-- Run by the postgres image on its first start (an empty data volume): a database each for Prefect's server,
-- MLflow's tracking and registry store, and MLflow's users (the basic-auth app). The servers migrate their own schemas.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
