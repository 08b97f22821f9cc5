"""The models page: one view per model of what serves, what waits, what happened and how it is doing.

``reads`` gathers a model's state from the stores the loop already writes (the MLflow registry and its alias
history, the run folders' ``summary.json``, the monitor's state file, the local server's record) and returns plain
dicts; ``render`` turns them into one server-rendered HTML page with inline SVG charts; ``app`` is the FastAPI app
that serves both behind Airflow's login (``plugins/models_page.py`` mounts it in the Airflow API server). None of
them imports Airflow at module level: the reads and the page run the same in a test, a benchmark or a script.
"""
