"""The steps of the continuous-training loop: the code that runs in containers. It never imports Airflow."""

__version__ = "0.1.0"
