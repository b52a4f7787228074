"""The console's overview page at `/`: what the fleet is doing, at a glance.

The page and its WebSocket pushes (orchestrator.live_pages) render the same
`overview` partial of templates/overview.html.
"""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from orchestrator import selectors
from sessions import selectors as session_selectors

OVERVIEW = "overview.html"


@login_required
@require_GET
def home(request):
    # The newest event id is read before the overview: an event committed in between is then
    # replayed by the live feed, not taken as already shown.
    last_event_id = session_selectors.event_latest_id()
    overview = selectors.fleet_overview()
    return render(request, OVERVIEW, {
        "overview": overview, "last_event_id": last_event_id,
        "pending_approvals": overview["pending_approvals"],  # the nav's count, already read
    })
