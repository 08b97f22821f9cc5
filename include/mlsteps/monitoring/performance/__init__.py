"""Performance monitoring: is the champion still as good as its holdout said, judged against sampling noise.

- ``calibration``: the probabilities' calibration, fitted on the validation split at training time (in the model
  package as JSON);
- ``estimate``: the expected metrics of a window from calibrated probabilities, before any label (classification);
- ``labels``: delayed labels read from files, checked, counted and matched to the logged predictions;
- ``reference``: the champion's holdout, giving a metric's expected value and its sampling error at a window's size;
- ``judge``: a value against the band ``expected ± band_sigmas · sampling_error``: a drop or not, and why.

Typical use (the ``performance`` step)::

    reference = PerformanceReference.load(path)
    estimates = estimate_metrics(task, classes, probabilities, Calibrator.from_dict(package.calibrator))
    verdict = judge("estimated", "roc_auc", estimates["roc_auc"], rows, reference, task, band_sigmas=3, samples=200)
    window = match_labels(records, read_labels(uri, ...), task, classes, model_version)
    value = metric_value(task, classes, "roc_auc", window.y_true, window.output)
"""
