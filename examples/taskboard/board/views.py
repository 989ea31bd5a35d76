from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_POST

from .models import Announcement, Task

OPEN = {"status__in": ["todo", "doing"]}


def visible_tasks(user):
    return Task.objects.filter(Q(team__members=user) | Q(assignee=user)).distinct().select_related("team", "assignee")


@login_required
def board(request):
    tasks = visible_tasks(request.user)
    return render(request, "board/board.html", {
        "tasks": tasks,
        "open_tasks": tasks.filter(status__in=OPEN["status__in"]),
        "open_filter": OPEN,
        "teams": request.user.teams.all(),
        "announcements": Announcement.objects.all() if request.user.is_staff else None,
    })


@login_required
@require_POST
def new_task(request):
    """Adds a task for the user's first team (or for the user alone). The
    page does not reload: the row arrives as a live event."""
    title = request.POST.get("title", "").strip()
    if not title:
        return HttpResponseBadRequest("a task needs a title")
    task = Task.objects.create(title=title[:200], team=request.user.teams.first(), assignee=request.user)
    return JsonResponse({"id": task.pk})


@login_required
@require_POST
def advance_task(request, pk):
    task = get_object_or_404(visible_tasks(request.user), pk=pk)
    order = ["todo", "doing", "done"]
    task.status = order[min(order.index(task.status) + 1, 2)]
    task.save(update_fields=["status", "updated"])
    return JsonResponse({"id": task.pk, "status": task.status})
