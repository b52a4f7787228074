"""Console pages: the list of contexts and one context with its recent history and a diff between
any two of its versions."""

import json

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from contexts import documents, selectors
from contexts.models import Scope
from orchestrator.errors import ValidationFailed

PAGE_SIZE = 100
HISTORY_SIZE = 50


@login_required
def context_list_page(request):
    scope = request.GET.get("scope") or None
    if scope not in Scope.values:
        scope = None
    contexts = list(selectors.context_list(scope=scope)[:PAGE_SIZE])
    rows = [{"context": context, "size": documents.document_size(context.data)} for context in contexts]
    return render(
        request, "contexts/list.html", {"rows": rows, "scopes": Scope.choices, "scope": scope, "limit": PAGE_SIZE}
    )


def _version_param(params, name, default):
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValidationFailed(field=name, rule="must be a version number") from None


def _version_diff(context, params):
    """{from, to, rows, error} of the diff between two versions (default: the previous and the current)."""
    latest = context.version
    result = {"from": max(1, latest - 1), "to": latest, "rows": [], "error": None}
    try:
        start = _version_param(params, "from", result["from"])
        end = _version_param(params, "to", latest)
        result.update({"from": start, "to": end})
        before = selectors.context_document_at(context=context, version=start)
        after = selectors.context_document_at(context=context, version=end)
        changes = documents.diff(before, after)
    except (ValidationFailed, documents.DocumentError) as failure:
        result["error"] = getattr(failure, "message", str(failure))
        return result
    rows = [{"kind": "added", "path": path, "new": json.dumps(value, ensure_ascii=False)}
            for path, value in changes.added.items()]
    rows += [{"kind": "removed", "path": path, "old": json.dumps(value, ensure_ascii=False)}
             for path, value in changes.removed.items()]
    rows += [{"kind": "changed", "path": path, "old": json.dumps(old, ensure_ascii=False),
              "new": json.dumps(new, ensure_ascii=False)} for path, (old, new) in changes.changed.items()]
    result["rows"] = sorted(rows, key=lambda row: row["path"])
    return result


@login_required
def context_detail_page(request, context_id):
    context = selectors.context_get_for_user(request.user, context_id)
    history = list(selectors.context_history(context=context)[:HISTORY_SIZE])
    for change in history:
        change.old_json = json.dumps(change.old_value, ensure_ascii=False)
        change.new_json = json.dumps(change.new_value, ensure_ascii=False)
    return render(
        request,
        "contexts/detail.html",
        {
            "context": context,
            "pretty": json.dumps(context.data, indent=2, ensure_ascii=False),
            "size": documents.document_size(context.data),
            "history": history,
            "diff": _version_diff(context, request.GET),
            "versions": range(context.version, 0, -1),
        },
    )
