"""The one exception type that reaches the user.

Anything a user can cause (a typo in a plugin name, an impossible grid, a corrupt checkpoint, a NaN loss) raises
:class:`UserError`. The CLI prints its message as a single line and exits with status 2; every other exception is a
bug in aotbench or in a plugin and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; ``str(err)`` is one line that names the cause."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
