"""
### Model configs that cannot run

Every file in `include/config/models/` gets its own retrain, monitor and deploy DAG (`dags/ml_retrain.py`,
`ml_model_monitor.py`, `ml_deploy.py`). A config that does not load, or that clashes with another (one model name
or local serving port claimed twice), gets none: this file raises its error, so it shows among the import errors of
the Airflow UI with the file and the field, while every other model's DAGs keep running. It defines no DAG.
"""

from __future__ import annotations

from orchestration.models import get_models

_broken = [entry.error for entry in get_models() if entry.error]
if _broken:
    raise ValueError(f"{len(_broken)} model config(s) cannot run:\n- " + "\n- ".join(_broken))
