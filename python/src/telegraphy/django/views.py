"""The token endpoint the JS client calls before each (re)connect."""

from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import tokens


@never_cache
@require_GET
def token(request):
    """GET → `{"token", "url", "realm", "expires_at"}` for the current user;
    403 `{"error": "not_authenticated", "message"}` for anonymous visitors
    unless TELEGRAPHY['ALLOW_ANONYMOUS']."""
    try:
        return JsonResponse(tokens.mint(request.user))
    except PermissionDenied as e:
        return JsonResponse({"error": "not_authenticated", "message": str(e)}, status=403)
