"""The steps of the continuous-training loop: the code that runs in containers. It never imports Airflow."""

import time

__version__ = "0.1.0"

# When the package was first imported: the start of a step process, for the elapsed time in its result.
IMPORTED_AT = time.perf_counter()
