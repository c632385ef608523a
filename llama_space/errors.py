"""The project's small error vocabulary; web/error_boundary.py maps each kind to every surface (UI, API, REST, /v1)."""


class UserError(Exception):
    """A problem the user can fix; its text is shown to them as is (a 400 over HTTP)."""


class NotFoundError(UserError):
    """The thing asked for (an adapter, a model id, a job) does not exist (a 404 over HTTP)."""


class BackendError(UserError):
    """The remote chat backend is down or answered something unusable (a 502 over HTTP)."""


class QueueFullError(UserError):
    """Too many generation requests are waiting; the caller should retry later (a 429 over HTTP)."""


class ModelLoadError(UserError):
    """The requested base model could not be loaded."""
