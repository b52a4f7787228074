"""Console pages: the list of contexts and one context with its recent history."""

import json

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from contexts import documents, selectors
from contexts.models import Scope

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
        },
    )
