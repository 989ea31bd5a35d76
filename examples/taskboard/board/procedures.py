"""Procedures the board's pages call through the gateway
(`client.call(...)` in board.js; served by telegraphy/rpc/)."""

from django.db import transaction

from telegraphy.django import RpcError, procedure

from .views import visible_tasks


def _signed_in(call):
    if not call.user.is_authenticated:
        raise RpcError("board.error.login_required", "sign in to use the board")
    return call.user


@procedure("board.summary")
def summary(call):
    """The caller's open work: what the board's "Your work" card shows."""
    user = _signed_in(call)
    tasks = visible_tasks(user)
    mine = tasks.filter(assignee=user)
    return {
        "open": mine.exclude(status="done").count(),
        "open_points": sum(t.points for t in mine.exclude(status="done")),
        "unassigned": tasks.filter(assignee__isnull=True).exclude(status="done").count(),
    }


@procedure("board.task.take_next")
def take_next(call):
    """Assigns the oldest open task nobody has to the caller. Every page
    that shows it sees the new assignee live (a model event)."""
    user = _signed_in(call)
    with transaction.atomic():
        task = visible_tasks(user).filter(assignee__isnull=True).exclude(status="done").select_for_update().order_by("pk").first()
        if task is None:
            raise RpcError("board.error.nothing_to_take", "every open task already has someone")
        task.assignee = user
        task.save(update_fields=["assignee", "updated"])
    return {"id": task.pk, "title": task.title}
