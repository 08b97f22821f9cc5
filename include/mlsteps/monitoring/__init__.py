"""Monitoring: the prediction log every scored row goes to (``prediction_log``), drift against the training data's
reference profile (``drift``), realized and estimated performance against the holdout (``performance``), and the
monitor's report over the recent windows (``report``)."""
