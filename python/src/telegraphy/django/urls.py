"""`path("telegraphy/", include("telegraphy.django.urls"))` adds
`telegraphy/token/` (URL name `telegraphy:token`)."""

from django.urls import path

from . import views

app_name = "telegraphy"

urlpatterns = [
    path("token/", views.token, name="token"),
]
