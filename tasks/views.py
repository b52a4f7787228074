"""Console pages for tasks: a plain list, optionally for one session."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from tasks import selectors


@login_required
def task_list(request):
    session_id = request.GET.get("session")
    session_id = int(session_id) if session_id and session_id.isdigit() else None
    tasks = selectors.task_list(session_id=session_id).select_related("session")[:500]
    return render(request, "tasks/list.html", {"tasks": tasks, "session_id": session_id})
