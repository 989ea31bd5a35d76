"""Telegraphy for Python: publish real-time events to browsers through a
Telegraphy gateway, over its HTTP endpoint, Redis or RabbitMQ.

    import telegraphy
    telegraphy.publish("com.example.orders.created", 42, total=9.5)

Layout:

* `publisher`: `Publisher`, one handle per destination, and its env config;
* `transports`: HTTP, Redis and RabbitMQ, each confirming acceptance;
* `envelope`: the canonical bus bytes (`docs/envelope.md`);
* `uri`: topic rules, as the gateway applies them;
* `errors`: `PublishError` and its four kinds;
* `client`: the default publisher behind `publish()` and `presence()`;
* `tokens`: browser tokens (JWTs) for any framework, `tokens.mint(...)`;
* `django`: the Django app (model events, tokens, template tags, widgets).
"""

import pathlib

from . import tokens
from .client import get_publisher, presence, publish, set_publisher
from .envelope import Envelope
from .errors import InvalidInput, NoSubscriber, PublishError, Rejected, Unauthorized, Unavailable
from .publisher import DEFAULT_REALM, Publisher, publisher_from_env

__version__ = "0.1.0"

#: The browser client's ES modules (`telegraphy.js` and its siblings), to serve
#: as static files from Flask, FastAPI or any web server.
JS_DIR = pathlib.Path(__file__).resolve().parent / "django" / "static" / "telegraphy"

__all__ = [
    "DEFAULT_REALM",
    "Envelope",
    "InvalidInput",
    "JS_DIR",
    "PublishError",
    "Publisher",
    "NoSubscriber",
    "Rejected",
    "Unauthorized",
    "Unavailable",
    "get_publisher",
    "presence",
    "publish",
    "publisher_from_env",
    "set_publisher",
    "tokens",
]
