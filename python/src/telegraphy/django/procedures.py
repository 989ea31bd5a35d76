"""Django functions as procedures browsers call through the gateway.

    # shop/procedures.py (autodiscovered, like events.py)
    from telegraphy.django import procedure, RpcError

    @procedure("shop.cart.add")
    def add_to_cart(call, sku, quantity=1):
        if not call.user.is_authenticated:
            raise RpcError("shop.error.login_required", "sign in first")
        line = Cart.for_user(call.user).add(sku, quantity)
        return {"sku": sku, "quantity": line.quantity}

The browser: ``await client.call("shop.cart.add", ["apple", 2])``. The
gateway forwards the call to ``telegraphy/rpc/`` (``[[rpc.http]]`` with
``url = ".../telegraphy/rpc/"``), signed with ``TELEGRAPHY["RPC_SECRET"]``;
the view checks the signature, finds the user the gateway authenticated
(the token's ``sub``: the user's primary key), and calls the function with
a ``call`` (``user``, ``caller``, ``procedure``, ``realm``) and the
positional and keyword arguments. A generator function streams: each
``yield`` is a progressive result, its ``return`` value the final one.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .. import rpc
from ..rpc import RpcError
from ..uri import is_valid_topic
from . import conf

logger = logging.getLogger("telegraphy.django")

#: procedure name → function
_registry: dict[str, Callable] = {}


@dataclass(frozen=True)
class CallContext:
    """What a procedure learns about its call."""

    #: The caller's Django user (AnonymousUser for anonymous sessions and
    #: for authids that are no user's primary key).
    user: Any
    #: The gateway's view of the caller: session, authid, authrole.
    caller: rpc.Caller
    procedure: str
    realm: str


def procedure(name: str):
    """Registers the decorated function as the procedure ``name``."""
    if not isinstance(name, str) or not is_valid_topic(name) or name.startswith("wamp."):
        raise ImproperlyConfigured(f"@procedure({name!r}): give a procedure URI of your application, such as 'shop.cart.add'")

    def register(func):
        if name in _registry and _registry[name] is not func:
            raise ImproperlyConfigured(
                f"@procedure({name!r}) is on both {_registry[name].__module__}.{_registry[name].__qualname__} "
                f"and {func.__module__}.{func.__qualname__}; a procedure has one function"
            )
        _registry[name] = func
        return func

    return register


def procedures() -> dict[str, Callable]:
    """Every registered procedure (name → function)."""
    return dict(_registry)


def _user_for(caller: rpc.Caller):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import AnonymousUser

    if caller.authrole == conf.get("ANONYMOUS_ROLE") or caller.authid.startswith("anonymous-"):
        return AnonymousUser()
    model = get_user_model()
    try:
        return model._default_manager.get(pk=model._meta.pk.to_python(caller.authid))
    except (model.DoesNotExist, ValidationError, ValueError, TypeError):
        return AnonymousUser()


def _json(answer: dict, status: int = 200) -> JsonResponse:
    return JsonResponse(answer, status=status, encoder=DjangoJSONEncoder)


def _line(answer: dict) -> bytes:
    return json.dumps(answer, cls=DjangoJSONEncoder).encode() + b"\n"


def _stream(generator, name: str):
    """NDJSON lines: each yielded value, then the return value."""
    try:
        while True:
            value = next(generator)
            yield _line({"progress": True, "result": value})
    except StopIteration as stop:
        yield _line({"result": stop.value})
    except RpcError as e:
        yield _line(e.answer())
    except Exception:
        logger.exception("procedure %s failed while streaming", name)
        yield _line({"error": "wamp.error.runtime_error", "args": ["the procedure failed; see the web-app's logs"]})


@csrf_exempt
@require_POST
def rpc_view(request):
    """The endpoint the gateway posts calls to (``[[rpc.http]]`` url)."""
    secret = conf.get("RPC_SECRET")
    try:
        call = rpc.verify(request.body, request.headers.get(rpc.SIGNATURE_HEADER), secret or "")
    except rpc.InvalidSignature as e:
        logger.warning("refused an RPC request from %s: %s", request.META.get("REMOTE_ADDR"), e)
        return _json({"error": "wamp.error.not_authorized", "args": [str(e)]}, status=403)
    except ValueError as e:
        return _json({"error": "wamp.error.invalid_argument", "args": [str(e)]}, status=400)
    func = _registry.get(call.procedure)
    if func is None:
        known = ", ".join(sorted(_registry)) or "none"
        message = f"no @procedure({call.procedure!r}) in this web-app (registered: {known})"
        return _json({"error": "wamp.error.no_such_procedure", "args": [message]}, status=404)
    context = CallContext(user=_user_for(call.caller), caller=call.caller, procedure=call.procedure, realm=call.realm)
    try:
        inspect.signature(func).bind(context, *call.args, **call.kwargs)
    except TypeError as e:
        return _json({"error": "wamp.error.invalid_argument", "args": [f"{call.procedure}: {e}"]}, status=400)
    try:
        value = func(context, *call.args, **call.kwargs)
    except RpcError as e:
        return _json(e.answer())
    except Exception:
        logger.exception("procedure %s failed", call.procedure)
        return _json({"error": "wamp.error.runtime_error", "args": ["the procedure failed; see the web-app's logs"]}, status=500)
    if inspect.isgenerator(value):
        return StreamingHttpResponse(_stream(value, call.procedure), content_type="application/x-ndjson")
    if isinstance(value, HttpResponse):
        return value
    return _json({"result": value})
