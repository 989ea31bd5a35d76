"""The Django app: add "telegraphy.django" to INSTALLED_APPS (app label
`telegraphy`). See docs/django.md.

* `ModelEvents` (model_events.py): class-based model events, published after
  the transaction commits; each app's `events.py` is autodiscovered.
* `conf.py`: the TELEGRAPHY settings dict, read lazily; `checks.py` validates it.
* `tokens.py`, `views.py`, `urls.py`: short-lived JWTs for the current user.
* `templatetags/telegraphy.py`: `{% telegraphy_scripts %}`, URL/prefix/topic
  helpers and the live widgets (label, list, table).
* `static/telegraphy/`: the JS client (copied from js/src by
  python/tools/sync_js.py), `boot.js` and `widgets.js`.
* `procedures.py`: `@procedure("shop.cart.add")` exposes a function to
  browsers' calls through the gateway (`telegraphy/rpc/`, signed calls);
  each app's `procedures.py` is autodiscovered.
* `management/commands/telegraphy_gateway.py`: runs a gateway for development.
"""

from ..rpc import RpcError
from .model_events import ModelEvents
from .procedures import procedure

__all__ = ["ModelEvents", "RpcError", "procedure"]
