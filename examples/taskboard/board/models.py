from django.conf import settings
from django.db import models


class Team(models.Model):
    name = models.CharField(max_length=50, unique=True)
    motto = models.CharField(max_length=200, blank=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="teams", blank=True)

    def __str__(self):
        return self.name


class Task(models.Model):
    class Status(models.TextChoices):
        TODO = "todo", "To do"
        DOING = "doing", "Doing"
        DONE = "done", "Done"

    title = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.TODO)
    points = models.PositiveSmallIntegerField(default=1)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="tasks",
                             help_text="Everyone in the team sees the task.")
    assignee = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="tasks", help_text="The assignee sees the task too.")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self):
        return self.title

    def watchers(self):
        """The users who may see this task: its team and its assignee."""
        users = set(self.team.members.all()) if self.team_id else set()
        if self.assignee_id:
            users.add(self.assignee)
        return users


class Announcement(models.Model):
    """Staff-only news."""

    text = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self):
        return self.text
