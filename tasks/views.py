"""Console pages for tasks: a plain list, optionally for one session."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from orchestrator.inputs import id_param
from tasks import selectors


@login_required
def task_list(request):
    session_id = id_param(request.GET, "session")  # ValidationFailed: a 400 page (orchestrator.middleware)
    tasks = selectors.task_list(session_id=session_id).select_related("session")[:500]
    return render(request, "tasks/list.html", {"tasks": tasks, "session_id": session_id})
