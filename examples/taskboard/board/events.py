"""What the board publishes (autodiscovered by telegraphy.django).

Topics: taskboard.board.team, taskboard.board.task, taskboard.board.announcement."""

from telegraphy.django import ModelEvents

from .models import Announcement, Task, Team


class TaskEvents(ModelEvents):
    model = Task
    fields = ["title", "status", "points", "team", "assignee"]

    def to_dict(self, task):
        data = super().to_dict(task)
        data["status_label"] = task.get_status_display()
        data["team_name"] = task.team.name if task.team_id else ""
        data["assignee_name"] = task.assignee.username if task.assignee_id else ""
        return data

    def recipients(self, task):
        # Every signed-in user may subscribe to the topic, but the gateway
        # hands each task's events only to its team and its assignee.
        return task.watchers()


class TeamEvents(ModelEvents):
    model = Team
    fields = ["name", "motto"]
    operations = ("update",)

    def recipients(self, team):
        return team.members.all()


class AnnouncementEvents(ModelEvents):
    model = Announcement
    fields = ["text"]
    verbose_name = "Staff announcements"

    def is_authorized(self, user):
        # Only staff tokens list this topic: the gateway refuses anyone else's SUBSCRIBE.
        return user.is_staff
