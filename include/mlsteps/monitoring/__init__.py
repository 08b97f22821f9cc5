"""Monitoring: the prediction log every scored row goes to (``prediction_log``) and drift against the training data's
reference profile (``drift``)."""
