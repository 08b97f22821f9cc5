"""The model server: a registered model's serving bundle in ONNX Runtime behind uvicorn (``python -m mlsteps.serve``).

- ``protocol``: request parsing and validation (Open Inference Protocol v2, MLflow's scoring format).
- ``model``: loading and smoke-checking a bundle (``load_model``), and ``ModelHandle``, the swappable reference.
- ``app``: ``create_app(handle, loader=..., max_body_bytes=...)``, the ASGI app.
- ``metrics``: the Prometheus metrics.
- ``cli``: the command line, with an environment variable for each option.
"""
