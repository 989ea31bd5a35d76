"""Demo data: users alice (staff, team Core) and bob (no team), password
`telegraphy`; a second member of Core (carol), a few tasks, an announcement.
Demo only: never run this example's migrations against real users."""

from django.contrib.auth.hashers import make_password
from django.db import migrations

PASSWORD = "telegraphy"


def create(apps, schema_editor):
    User = apps.get_model("auth", "User")
    Team = apps.get_model("board", "Team")
    Task = apps.get_model("board", "Task")
    Announcement = apps.get_model("board", "Announcement")
    alice = User.objects.create(username="alice", is_staff=True, is_superuser=True, password=make_password(PASSWORD))
    bob = User.objects.create(username="bob", password=make_password(PASSWORD))
    carol = User.objects.create(username="carol", password=make_password(PASSWORD))
    core = Team.objects.create(name="Core", motto="Ship small, ship often")
    core.members.add(alice, carol)
    Task.objects.create(title="Write the release notes", status="doing", points=2, team=core, assignee=alice)
    Task.objects.create(title="Review the gateway metrics", status="todo", points=3, team=core, assignee=carol)
    Task.objects.create(title="Fix the flaky login test", status="todo", points=1, assignee=bob)
    Task.objects.create(title="Water the office plants", status="done", points=1, assignee=bob)
    Announcement.objects.create(text="Retro on Friday at 15:00")


def remove(apps, schema_editor):
    apps.get_model("auth", "User").objects.filter(username__in=["alice", "bob", "carol"]).delete()
    apps.get_model("board", "Team").objects.filter(name="Core").delete()


class Migration(migrations.Migration):
    dependencies = [("board", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create, remove)]
