"""`path("telegraphy/", include("telegraphy.django.urls"))` adds
`telegraphy/token/` (URL name `telegraphy:token`) and `telegraphy/rpc/`
(`telegraphy:rpc`, where the gateway posts calls of `@procedure`s)."""

from django.urls import path

from . import procedures, views

app_name = "telegraphy"

urlpatterns = [
    path("token/", views.token, name="token"),
    path("rpc/", procedures.rpc_view, name="rpc"),
]
