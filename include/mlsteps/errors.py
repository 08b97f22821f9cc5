"""Error types of the steps package.

Every error a user can fix (bad config, bad data, a failed gate) is a ``StepError``: the CLI prints its
message and exits with ``EXIT_USER_ERROR`` so the orchestrator knows a retry cannot help.
"""

EXIT_USER_ERROR = 2


class StepError(Exception):
    """A failure caused by input, config or a gate decision; retrying the same step will not fix it."""


class ConfigError(StepError, ValueError):
    """The pipeline or dataset config is invalid; the message names the file and field."""


class DataError(StepError):
    """The input data cannot be used (unreadable, empty, wrong columns or types)."""


class ValidationFailed(StepError):
    """The data validation suite failed; the message names the failing columns and expectations."""


class RegistryConflict(StepError):
    """The model registry changed under us (for example ``champion`` moved since evaluation)."""


class StorageError(StepError):
    """A path or URI cannot be used as given: a file where a folder belongs, or no credentials for S3."""


class RegistryError(StepError):
    """The MLflow tracking server refused a request for good: an unknown model or version, no permission, or
    credentials it does not accept. The message names the tracking URI and what to change."""


class StoreUnavailable(RuntimeError):
    """An object store or the MLflow server did not answer through every retry (connection refused or reset,
    timeouts, 5xx, throttling). Not a ``StepError``: the failure is transient, so the orchestrator's retry of the
    task may succeed. The message names the store and how many attempts were made."""
