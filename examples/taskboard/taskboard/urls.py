from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from board import views

urlpatterns = [
    path("", views.board, name="board"),
    path("tasks/new/", views.new_task, name="new_task"),
    path("tasks/<int:pk>/next/", views.advance_task, name="advance_task"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("telegraphy/", include("telegraphy.django.urls")),
]
