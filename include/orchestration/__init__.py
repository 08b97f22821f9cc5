"""Airflow-side helpers the DAGs import: settings, the one pod-task factory, assets, and small decision tasks."""
