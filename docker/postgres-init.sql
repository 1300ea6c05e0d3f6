-- A second database for MLflow's tracking store, beside the Optuna one.
CREATE DATABASE mlflow OWNER pixelexp;
