"""Typed publishing errors, the same kinds as the Rust publisher
(`telegraphy_publisher::ErrorKind`). Catch `PublishError` for all of them;
each message says what to fix."""


class PublishError(Exception):
    """A publish did not succeed; nothing was reported published.

    `kind` is one of "invalid_input", "unavailable", "unauthorized",
    "rejected", "no_subscriber" (the subclass names, snake-cased)."""

    kind = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(PublishError):
    """The event, the URL or the settings are malformed: fix the input."""

    kind = "invalid_input"


class Unavailable(PublishError):
    """The bus or gateway could not be reached, or is not taking events now:
    retry later. The event may or may not have been delivered only when the
    connection broke after it was sent (the message says so)."""

    kind = "unavailable"


class Unauthorized(PublishError):
    """The credentials were refused (API key, broker user or password)."""

    kind = "unauthorized"


class Rejected(PublishError):
    """The bus or gateway refused this event and would refuse it again."""

    kind = "rejected"


class NoSubscriber(PublishError):
    """`require_subscriber=True` was asked and no gateway node subscribed to
    the topic got the event (the bus took it and dropped it)."""

    kind = "no_subscriber"
