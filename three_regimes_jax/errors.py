"""User-facing errors: one line that says what is wrong and how to fix it."""


class UserError(ValueError):
    """Bad input from a user (flag, config, file).

    The CLI prints ``three-regimes: error: <message>`` on stderr and exits with
    code 2; nothing is written.  Messages are one line and say how to fix it.
    """
