"""Typed, user-facing errors. The CLI prints ``reroute: error: <message>`` and exits with ``exit_code``."""


class RerouteError(Exception):
    """Bad input or an environment that cannot do what was asked: exit status 2."""

    exit_code = 2


class ParityFailure(RerouteError):
    """Backends disagree beyond tolerance: exit status 1."""

    exit_code = 1


class CheckFailure(RerouteError):
    """A static check found problems: exit status 1."""

    exit_code = 1
