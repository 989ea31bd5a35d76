"""System checks for the TELEGRAPHY settings and the declared model events
(`manage.py check`; ids telegraphy.E001..., telegraphy.W001...)."""

from __future__ import annotations

import difflib
import importlib.util
import os
import urllib.parse

from django.core.checks import Error, Warning

from . import conf
from ..uri import is_valid_topic

REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
TLS_SCHEMES = ("rediss", "amqps", "rediss+cluster", "rediss+sentinel")

SETTINGS_HINT = "See docs/django.md, section Settings."


def _error(id_, msg, hint=None):
    return Error(msg, hint=hint or SETTINGS_HINT, obj="settings.TELEGRAPHY", id=f"telegraphy.{id_}")


def check_settings(app_configs=None, **kwargs):
    from django.conf import settings

    raw = getattr(settings, "TELEGRAPHY", None)
    if raw is None:
        return [Warning(
            "settings.TELEGRAPHY is not set: the defaults are used, and there is no SECRET to sign tokens with.",
            hint="Add TELEGRAPHY = {'SECRET': ..., 'API_KEY': ...} matching your gateway's TELEGRAPHY_JWT_SECRET and "
                 "TELEGRAPHY_API_KEYS.",
            obj="settings.TELEGRAPHY", id="telegraphy.W002",
        )]
    if not isinstance(raw, dict):
        return [_error("E001", f"settings.TELEGRAPHY must be a dict, not {type(raw).__name__}.")]
    errors = []
    for key in raw:
        if key not in conf.DEFAULTS:
            close = difflib.get_close_matches(str(key), conf.DEFAULTS, n=1)
            hint = f"Did you mean {close[0]!r}?" if close else f"Known keys: {', '.join(conf.DEFAULTS)}."
            errors.append(_error("E001", f"settings.TELEGRAPHY has an unknown key {key!r}.", hint))

    secret = raw.get("SECRET")
    if not isinstance(secret, str) or len(secret.encode("utf-8")) < 32:
        errors.append(_error(
            "E002",
            "TELEGRAPHY['SECRET'] must be a string of at least 32 bytes (the gateway's TELEGRAPHY_JWT_SECRET).",
            "Generate one with `openssl rand -hex 32`, give the same value to the gateway as TELEGRAPHY_JWT_SECRET, "
            "and keep it out of git (read it from the environment).",
        ))

    gateway = conf.get("GATEWAY_URL")
    parts = urllib.parse.urlsplit(gateway) if isinstance(gateway, str) else None
    if parts is None or parts.scheme not in ("ws", "wss") or not parts.netloc:
        errors.append(_error(
            "E003", f"TELEGRAPHY['GATEWAY_URL'] must be the gateway's WebSocket URL, ws:// or wss://, not {gateway!r}.",
            "For example 'ws://127.0.0.1:8080/ws' in development, 'wss://events.example.com/ws' in production.",
        ))

    publish_url, bus = raw.get("PUBLISH_URL"), raw.get("BUS")
    if publish_url and bus:
        errors.append(_error(
            "E004", "TELEGRAPHY has both PUBLISH_URL and BUS; Django publishes through one of them.",
            "Keep BUS to publish straight to Redis/RabbitMQ, or PUBLISH_URL (with API_KEY) for a gateway's HTTP "
            "endpoint.",
        ))
    if publish_url is not None and (
        not isinstance(publish_url, str) or urllib.parse.urlsplit(publish_url).scheme not in ("http", "https")
    ):
        errors.append(_error(
            "E005", f"TELEGRAPHY['PUBLISH_URL'] must be an http:// or https:// URL, not {publish_url!r}.",
            "It is the gateway's public listener, e.g. 'http://127.0.0.1:8080' (POST /publish is served there).",
        ))
    if bus is not None:
        scheme = urllib.parse.urlsplit(bus).scheme if isinstance(bus, str) else None
        if scheme == "memory":
            errors.append(_error(
                "E006", "TELEGRAPHY['BUS'] is memory://, which only exists inside one gateway process.",
                "Remove BUS and publish through the gateway's HTTP endpoint (PUBLISH_URL and API_KEY).",
            ))
        elif scheme not in REDIS_SCHEMES + ("amqp", "amqps"):
            errors.append(_error(
                "E006", f"TELEGRAPHY['BUS'] must be a redis:// or amqp:// URL (rediss://, amqps:// for TLS; "
                        f"redis+cluster://, redis+sentinel:// for a Redis Cluster or Sentinel), not {bus!r}.",
                "For example 'redis://127.0.0.1:6379/0' or 'amqp://guest:guest@127.0.0.1:5672/%2f', the same bus "
                "as the gateways'.",
            ))
        else:
            extra = "redis" if scheme in REDIS_SCHEMES else "amqp"
            package = {"redis": "redis", "amqp": "pika"}[extra]
            if importlib.util.find_spec(package) is None:
                errors.append(_error(
                    "E007", f"TELEGRAPHY['BUS'] is a {scheme}:// URL but the {package} package is not installed.",
                    f"pip install 'telegraphy[{extra}]'",
                ))
    tls_files = {k: raw.get(k) for k in ("BUS_TLS_CA_FILE", "BUS_TLS_CERT_FILE", "BUS_TLS_KEY_FILE")}
    for key, path in tls_files.items():
        if path is not None and not (isinstance(path, str) and os.path.isfile(path)):
            errors.append(_error(
                "E018", f"TELEGRAPHY['{key}'] is {path!r}, which is not a file.",
                "Give the path of a PEM file the Django process can read (a mounted secret).",
            ))
    if any(tls_files.values()) and not (isinstance(bus, str) and urllib.parse.urlsplit(bus).scheme in TLS_SCHEMES):
        errors.append(_error(
            "E018", "TELEGRAPHY has BUS_TLS_* files but BUS is not a rediss:// or amqps:// URL.",
            "Use rediss:// or amqps:// in BUS for TLS to the broker, or remove the BUS_TLS_* settings.",
        ))
    if (tls_files["BUS_TLS_CERT_FILE"] is None) != (tls_files["BUS_TLS_KEY_FILE"] is None):
        errors.append(_error(
            "E018", "TELEGRAPHY has only one of BUS_TLS_CERT_FILE and BUS_TLS_KEY_FILE.",
            "A client certificate needs its key: set both, or neither.",
        ))
    if not bus:
        key = raw.get("API_KEY")
        if not isinstance(key, str) or len(key) < 8:
            errors.append(_error(
                "E008",
                "TELEGRAPHY['API_KEY'] must be set (at least 8 characters) to publish through the gateway's HTTP "
                "endpoint.",
                "Use one of the gateway's TELEGRAPHY_API_KEYS (generate one with `openssl rand -hex 24`), or set "
                "BUS to publish straight to Redis or RabbitMQ.",
            ))

    prefix = conf.get("TOPIC_PREFIX")
    if not isinstance(prefix, str) or (prefix and not is_valid_topic(prefix)) or str(prefix).split(".")[0] == "wamp":
        errors.append(_error(
            "E009", f"TELEGRAPHY['TOPIC_PREFIX'] {prefix!r} is not a valid topic prefix.",
            "Use dot-separated words without spaces or '#', not starting with 'wamp', e.g. 'telegraphy' or "
            "'com.example.shop'.",
        ))
    realm = conf.get("REALM")
    if not is_valid_topic(realm):
        errors.append(_error("E010", f"TELEGRAPHY['REALM'] {realm!r} is not a valid realm name.",
                             "Use one of the gateway's realms (default 'realm1')."))
    ttl = conf.get("TOKEN_TTL")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        errors.append(_error("E011", f"TELEGRAPHY['TOKEN_TTL'] must be a positive number of seconds, not {ttl!r}.",
                             "Keep it short (minutes): the JS client fetches a new token on each reconnect."))
    for key in ("ROLE", "ANONYMOUS_ROLE"):
        role = conf.get(key)
        if not isinstance(role, str) or not role:
            errors.append(_error("E012", f"TELEGRAPHY[{key!r}] must be the name of a gateway role, not {role!r}.",
                                 "The gateway's built-in roles are 'user' and 'anonymous'."))
    timeout = conf.get("TIMEOUT")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        errors.append(_error("E013", f"TELEGRAPHY['TIMEOUT'] must be a positive number of seconds, not {timeout!r}."))
    errors += _check_origins(conf.get("ALLOWED_ORIGINS"))
    errors += _check_topics(conf.get("TOPICS"))
    errors += _check_topics_for(conf.get("TOPICS_FOR"))
    return errors


def _origin_ok(origin: str) -> bool:
    if origin == "*":
        return True
    parts = urllib.parse.urlsplit(origin.rstrip("/"))
    try:
        parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.path and not parts.query


def _check_origins(origins):
    """ALLOWED_ORIGINS: a list (or tuple) of origins, or one string of
    comma-separated origins (as the gateway's TELEGRAPHY_ALLOWED_ORIGINS)."""
    if origins is None:
        return []
    hint = ("For example ['http://127.0.0.1:8000', 'https://app.example.com'], or the same as one comma-separated "
            "string 'http://127.0.0.1:8000,https://app.example.com'.")
    if not isinstance(origins, (str, list, tuple)) or not all(isinstance(o, str) for o in origins):
        return [_error("E014", f"TELEGRAPHY['ALLOWED_ORIGINS'] must be a list of origins (or a comma-separated "
                               f"string), not {origins!r}.", hint)]
    bad = [o for o in conf.origins_list(origins) if not _origin_ok(o)]
    if bad:
        return [_error("E014", f"TELEGRAPHY['ALLOWED_ORIGINS'] has {bad[0]!r}, which is not a page origin "
                               f"(scheme://host[:port], no path).", hint)]
    if not conf.origins_list(origins):
        return [_error("E014", "TELEGRAPHY['ALLOWED_ORIGINS'] is empty: no page could open a WebSocket.", hint)]
    return []


def _check_topics(topics):
    from ..uri import pattern_error

    hint = ("TOPICS maps topic patterns to who may receive them, e.g. {'myshop.reports.*': ['staff', "
            "'group:managers'], 'myshop.news': 'authenticated'}; audiences: 'everyone', 'authenticated', 'staff', "
            "'superuser', 'group:NAME', 'perm:APP_LABEL.CODENAME'.")
    if not isinstance(topics, dict):
        return [_error("E015", f"TELEGRAPHY['TOPICS'] must be a dict of pattern → audiences, not "
                               f"{type(topics).__name__}.", hint)]
    errors = []
    for pattern, audiences in topics.items():
        problem = pattern_error(pattern)
        if problem:
            errors.append(_error("E015", f"TELEGRAPHY['TOPICS'] key {pattern!r}: {problem}.", hint))
        if not isinstance(audiences, (str, list, tuple)) or not all(isinstance(a, str) for a in audiences):
            errors.append(_error("E015", f"TELEGRAPHY['TOPICS'][{pattern!r}] must be an audience or a list of them, "
                                         f"not {audiences!r}.", hint))
            continue
        for audience in conf.audiences_of(audiences):
            known = audience in conf.AUDIENCES or (
                audience.startswith(conf.AUDIENCE_PREFIXES) and audience.split(":", 1)[1]
                and (not audience.startswith("perm:") or "." in audience))
            if not known:
                close = difflib.get_close_matches(audience, conf.AUDIENCES, n=1)
                errors.append(_error(
                    "E015", f"TELEGRAPHY['TOPICS'][{pattern!r}] has an unknown audience {audience!r}.",
                    f"Did you mean {close[0]!r}?" if close else hint))
    return errors


def _check_topics_for(path):
    if path is None or callable(path):
        return []
    from django.utils.module_loading import import_string

    hint = "TOPICS_FOR is the dotted path of a function `def topics_for(user): return [patterns]`."
    if not isinstance(path, str):
        return [_error("E016", f"TELEGRAPHY['TOPICS_FOR'] must be a dotted path, not {path!r}.", hint)]
    try:
        fn = import_string(path)
    except ImportError as e:
        return [_error("E016", f"TELEGRAPHY['TOPICS_FOR'] {path!r} cannot be imported: {e}.", hint)]
    if not callable(fn):
        return [_error("E016", f"TELEGRAPHY['TOPICS_FOR'] {path!r} is not callable.", hint)]
    return []


def check_events(app_configs=None, **kwargs):
    from .model_events import OPERATIONS, registry

    errors = []
    topics = {}
    for events in registry.all():
        cls = type(events)
        obj = f"{cls.__module__}.{cls.__qualname__}"
        model = events.model_class
        if model is None:
            errors.append(Error(
                f"{cls.__name__}.model {cls.model!r} is not an installed model.",
                hint="Set model to a model class or 'app_label.ModelName'.", obj=obj, id="telegraphy.E020",
            ))
            continue
        bad_ops = [op for op in events.operations if op not in OPERATIONS] if not isinstance(
            events.operations, str) else [events.operations]
        if bad_ops:
            errors.append(Error(
                f"{cls.__name__}.operations has {', '.join(map(repr, bad_ops))}.",
                hint='Use a tuple of "create", "update", "delete".', obj=obj, id="telegraphy.E021",
            ))
        if events.fields is not None and events.fields != "__all__" and events.exclude:
            errors.append(Error(f"{cls.__name__} sets both fields and exclude.", hint="Keep one of them.",
                                obj=obj, id="telegraphy.E022"))
        names = list(events.exclude)
        if events.fields not in (None, "__all__"):
            if isinstance(events.fields, str):
                errors.append(Error(f"{cls.__name__}.fields must be a list of names, not a string.",
                                    hint=f'fields = ["{events.fields}"]', obj=obj, id="telegraphy.E023"))
                names = []
            else:
                names += list(events.fields)
        for name in names:
            try:
                model._meta.get_field(name)
            except Exception:
                if not hasattr(model, name):
                    errors.append(Error(
                        f"{cls.__name__} names {name!r}, which is neither a field nor an attribute of "
                        f"{model._meta.label}.",
                        hint=f"Fields: {', '.join(f.name for f in model._meta.concrete_fields)}.",
                        obj=obj, id="telegraphy.E024",
                    ))
        if events.name is not None and (not is_valid_topic(events.name) or "*" in events.name):
            errors.append(Error(
                f"{cls.__name__}.name {events.name!r} is not a valid topic suffix.",
                hint="Use dot-separated words without spaces, '#' or '*', e.g. 'orders' or 'shop.orders'.",
                obj=obj, id="telegraphy.E025",
            ))
            continue
        topic = events.topic
        if topic in topics:
            errors.append(Error(
                f"{cls.__name__} and {topics[topic]} both publish on {topic}.",
                hint="Give one of them another name.", obj=obj, id="telegraphy.E026",
            ))
        topics[topic] = cls.__name__
    return errors


def check_templates(app_configs=None, **kwargs):
    from django.conf import settings

    for engine in getattr(settings, "TEMPLATES", []):
        if engine.get("BACKEND") != "django.template.backends.django.DjangoTemplates":
            continue
        processors = engine.get("OPTIONS", {}).get("context_processors", [])
        if "django.template.context_processors.request" not in processors:
            return [Warning(
                "{% telegraphy_scripts %} needs the request in the template context to mint the user's token.",
                hint="Add 'django.template.context_processors.request' to TEMPLATES OPTIONS context_processors.",
                obj="settings.TEMPLATES", id="telegraphy.W001",
            )]
    return []


def check_procedures(app_configs=None, **kwargs):
    """@procedure functions need TELEGRAPHY["RPC_SECRET"], the gateway's
    rpc.secret, to trust the calls the gateway forwards."""
    from .procedures import procedures

    registered = procedures()
    if not registered:
        return []
    secret = conf.get("RPC_SECRET")
    if not isinstance(secret, str) or len(secret.encode()) < 32:
        names = ", ".join(sorted(registered))
        return [_error(
            "E017",
            f"@procedure functions ({names}) need TELEGRAPHY['RPC_SECRET'], a string of at least 32 bytes: "
            "without it every call is refused.",
            "Generate one with `openssl rand -hex 32`; give the same value to the gateway as rpc.secret "
            "(TELEGRAPHY_RPC_SECRET), with [[rpc.http]] entries pointing at /telegraphy/rpc/. See docs/django.md.",
        )]
    return []
