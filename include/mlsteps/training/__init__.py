"""Training library code: the tabular network (``mlp``) and the training loop (``trainer``).

Both import only torch, numpy, pandas and scikit-learn (and ``mlsteps`` modules that do the same), never MLflow,
typer, pydantic or YAML, so ``benchmarks/gpu_check.py`` trains with the real code on a machine that has little
else installed. The train step (``mlsteps.steps.train``) adds MLflow, checkpoints and the CLI around them.
"""
