from django.urls import include, path

from tests.testapp import views

urlpatterns = [
    path("telegraphy/", include("telegraphy.django.urls")),
    path("page/", views.page),
]
