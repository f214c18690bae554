"""User-facing errors.

Anything a user can cause (bad config, missing or corrupt input, wrong shapes) raises
:class:`PipelineError` with one line that says what and where. The CLI prints it as a single
line and exits with status 2 instead of showing a traceback.
"""


class PipelineError(Exception):
    """An error caused by the user's input or configuration; its message is one line."""
