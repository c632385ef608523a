"""The project's small error vocabulary."""


class UserError(Exception):
    """A problem the user can fix; its text is shown to them as is."""


class ModelLoadError(UserError):
    """The requested base model could not be loaded."""
