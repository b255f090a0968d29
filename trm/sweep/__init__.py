"""Sweeps: Ray Train per trial, Ray Tune with Optuna (TPE) and ASHA, MLflow parent/child runs."""
