from django.contrib import admin

from .models import Announcement, Task, Team


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["title", "status", "points", "team", "assignee"]
    list_editable = ["status", "points"]
    list_filter = ["status", "team"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "motto"]
    filter_horizontal = ["members"]


admin.site.register(Announcement)
