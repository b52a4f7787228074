"""The planning flow of a run (issue 22; docs/decisions/0200 and 0220): before the graph, and when it fails.

`plan_before_graph(run)`, called once the worktree is ready, decides what the session runs:

- a current plan still `proposed` (supplied at creation with approval required, or a plain resume
  while the session waited in review): the session pauses in `plan_review` again and the run ends;
- a plan sent back with a comment: a revision planning turn (the previous plan and the comment);
- an approved plan: its graph runs;
- no plan: mode `single` runs the root task (as before planning existed), `template` proposes the
  decomposition template's plan, `planner` runs a planning turn.

A planning turn is a task of the session (tasks.planning.plan_add_planning_task, key `@plan-n`,
`@revision-n`, `@replan-n`) routed to an agent with `task_decomposition` and prompted on OpenCode's
read-only `plan` agent in the session's worktree, whatever agent took it (tasks.planner.planner_prompt).
Its answer is checked (tasks.plans.check_answer); a refused answer gets ONE repair turn on the same
OpenCode session quoting the findings; refused again, the planning task fails with the findings and
the session fails with the typed error `plan_invalid`. A sound answer is proposed (plan_propose):
approved at once (plan_approval auto, the graph runs) or the session pauses in plan_review and the
run ends (SessionEnded).

`replan_after_failure(run)`, called when the graph has run out of work, starts a replan when a task
failed for good and the session's `replan_limit` allows: a planning turn that sees the plan, the
completed tasks and the failure, whose answer plans the remaining work (kept tasks stay: see
plan_store_graph). The tasks it takes over (the failed ones and those skipped because of them) and
the planning tasks do not count in the session's outcome (`outcome_summary`).
"""

import logging
import time

from agents.models import Agent
from agents.services import NoAgentAvailable, agent_record_result, agent_release, agent_route
from orchestrator.errors import ValidationFailed
from sessions.execution import servers, workspace
from sessions.execution.run_guard import SessionEnded
from sessions.execution.task_turn import TaskTurn, TurnEvents, TurnOutcome
from sessions.models import SessionStatus as S
from sessions.planning.options import options_of
from sessions.planning.selectors import (
    plan_current,
    plan_outcome_excluded,
    plan_planning_tasks,
    plan_replans_used,
    plan_turns_taken,
)
from sessions.planning.services import (
    PLAN_REVIEW,
    plan_await_review,
    plan_propose,
    plan_record_refused,
    plan_revision_taken,
)
from sessions.recovery import session_retry_automatically
from tasks import services as task_services
from tasks.models import PlanStatus, Task, TaskStatus
from tasks.planner import planner_prompt, template_plan
from tasks.planning import plan_add_planning_task
from tasks.plans import check_answer, plan_from_answer
from tasks.readiness import plan_summary

logger = logging.getLogger(__name__)

# OpenCode's read-only agent (edits denied): a planning turn reads the code, it does not change it.
PLANNER_OPENCODE_AGENT = "plan"
PLANNING_CAPABILITY = "task_decomposition"
AGENT_RETRY_SECONDS = 1.0
# Routing failures no wait can cure (as for any task in session_run).
NO_AGENT_EVER = frozenset({"missing_capabilities", "no_agent_has_all"})
TITLES = {"plan": "Plan the work", "revision": "Revise the plan", "replan": "Replan the remaining work"}
UNFINISHED = (TaskStatus.PENDING, TaskStatus.READY, TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS,
              TaskStatus.PAUSED, TaskStatus.BLOCKED)


class PlanningTurn(TaskTurn):
    """A task turn whose prompt is given (the planner's), on OpenCode's `plan` agent; a repair turn
    continues the first turn's OpenCode session (it sees its own refused answer)."""

    def __init__(self, session_run, task: Task, agent: Agent, events: TurnEvents, *, prompt: str,
                 opencode_session_id: str = ""):
        super().__init__(session_run, task, agent, events)
        self.opencode_agent = PLANNER_OPENCODE_AGENT
        self.planning_prompt = prompt
        self.continue_in = opencode_session_id

    def _choose_start(self, resume: bool) -> tuple[str, str]:
        if self.continue_in:
            self.opencode_session_id = self.continue_in
            return "repair", self.planning_prompt
        self.opencode_session_id = self.session_run.create_opencode_session(self.task)
        return "new", self.planning_prompt


# --- the hooks -------------------------------------------------------------------------------------


def plan_before_graph(run) -> None:
    """Plan the session if it needs it (see the module). Returns when its graph may run; raises
    SessionEnded when the run ends here (paused for review, or failed)."""
    session = run.session
    current = plan_current(session=session)
    options = options_of(session.metadata)
    if current is None and options.mode == "single":
        return  # as before planning existed (planning tasks exist only in planned sessions): one query
    _drop_unfinished_planning(run)
    if current is not None and current.status == PlanStatus.PROPOSED:
        # Not reviewed yet. A plain resume of a session in plan_review lands here too: it pauses
        # again for review (paused_reason set again) instead of running an unapproved plan.
        plan_await_review(session=session, actor=run.actor)
        raise SessionEnded(S.PAUSED, PLAN_REVIEW)
    if current is not None and current.status == PlanStatus.SENT_BACK:
        if current.revision_requested:
            plan_revision_taken(plan=current)
        # Still sent back without the flag: the revision turn started but its run was cut short.
        completed, failure = (), None
        if current.source == "replan":  # a revised replan still plans the remaining work only
            replans = [t for t in plan_planning_tasks(session=session)
                       if t.plan_key.startswith("@replan-") and t.status == TaskStatus.COMPLETED]
            failure = (replans[-1].result or {}).get("failure") if replans else None
            completed = _completed_keys(session, plan_outcome_excluded(session=session))
        _planning_turns(run, kind="revision", previous_plan=current.submitted, comment=current.comment,
                        completed=completed, failure=failure)
        return
    if current is not None:
        return  # approved: its graph runs (a later run of a session paused or retried mid-graph too)
    if options.mode == "template":
        row = plan_propose(session=session, plan=template_plan(
            title=session.title, work=session.initial_prompt, template=options.template,
        ), source="template", actor=run.actor)
        _end_if_in_review(row)
    elif options.mode == "planner":
        _planning_turns(run, kind="plan")


def replan_after_failure(run) -> bool:
    """Called when the graph has run out of work: start a replan if a task of the plan failed for
    good and `replan_limit` allows (True: the graph has new work; the caller refreshes and goes on).
    Raises SessionEnded when the replan pauses for review or fails."""
    session, state = run.session, run.plan
    failed = [pk for pk in state.leaves() if state.statuses[pk] == TaskStatus.FAILED]
    if not failed:
        return False
    current = plan_current(session=session)
    if current is None:
        return False  # no plan (mode single): nothing to replan
    excluded = plan_outcome_excluded(session=session)
    failed = [pk for pk in failed if pk not in excluded]
    if not failed:
        return False
    options = options_of(session.metadata)
    used = plan_replans_used(session=session)
    if used >= options.replan_limit:
        run.record([("plan.replan", {"started": False, "failed_task_ids": failed, "replans_used": used,
                                     "replan_limit": options.replan_limit})])
        return False
    replaces = [pk for pk in state.leaves() if pk not in excluded
                and state.statuses[pk] in (TaskStatus.FAILED, TaskStatus.SKIPPED)]
    rows = {row.pk: row for row in Task.objects.filter(pk__in=replaces)}
    first = rows[failed[0]]
    completed = _completed_keys(session, excluded)
    failure = {"task": first.plan_key or first.title, "error": (first.error or {}).get("message", "failed"),
               "output": first.output or ""}
    run.record([("plan.replan", {
        "started": True, "failed_task_ids": failed, "failed_keys": [rows[pk].plan_key for pk in failed],
        "error": failure["error"], "replaces": replaces, "replans_used": used + 1,
        "replan_limit": options.replan_limit,
    })])
    _planning_turns(run, kind="replan", previous_plan=current.submitted, completed=completed, failure=failure,
                    replaces=replaces)
    return True


def _completed_keys(session, excluded: set) -> list:
    return sorted(key for pk, key in Task.objects.filter(session=session, status=TaskStatus.COMPLETED)
                  .exclude(plan_key="").values_list("id", "plan_key") if pk not in excluded)


def outcome_summary(run) -> dict:
    """The plan's summary (readiness.plan_summary) over the tasks that count: not the planning tasks,
    not the tasks a replan took over."""
    excluded = plan_outcome_excluded(session=run.session)
    if not excluded:
        return run.plan.summary()
    return plan_summary(run.plan.statuses[pk] for pk in run.plan.leaves() if pk not in excluded)


# --- a planning task -----------------------------------------------------------------------------


def _planning_turns(run, *, kind: str, previous_plan: dict | None = None, comment: str = "",
                    completed: list = (), failure: dict | None = None, replaces: list = ()) -> None:
    """One planning task: its turn, one repair turn if the answer is refused, then the plan proposed
    (returns: approved, the graph may run) or the run ended (SessionEnded)."""
    session = run.session
    files = workspace.git("ls-files", cwd=run.worktree.path).splitlines()
    first_turn = plan_turns_taken(session=session) + 1

    def prompt(turn, findings=()):
        return planner_prompt(title=session.title, work=session.initial_prompt, files=files, turn=turn,
                              findings=findings, previous_plan=previous_plan, comment=comment,
                              completed=completed, failure=failure)

    task = plan_add_planning_task(session=session, kind=kind, title=f"{TITLES[kind]}: {session.title}",
                                  prompt=prompt(first_turn), capabilities=(PLANNING_CAPABILITY,))
    agent, routed = _route(run, task)
    started, outcome, tokens, cost = time.monotonic(), None, 0, 0
    checked = None
    try:
        task = task_services.task_assign(task=task, agent=agent, start=True)
        run.record(routed)
        outcome = _turn(run, task, agent, prompt=task.description, kind=kind, turn=first_turn)
        tokens, cost = outcome.tokens, outcome.cost
        if outcome.completed:
            checked = check_answer(outcome.text, repository=run.worktree.path)
            if not checked.ok:
                plan_record_refused(session=session, findings=checked.findings, source=kind, attempt=1)
                outcome = _turn(run, task, agent, prompt=prompt(first_turn + 1, checked.findings), kind="repair",
                                turn=first_turn + 1, opencode_session_id=outcome.opencode_session_id)
                tokens, cost = tokens + outcome.tokens, cost + outcome.cost
                checked = check_answer(outcome.text, repository=run.worktree.path) if outcome.completed else None
                if checked is not None and not checked.ok:
                    plan_record_refused(session=session, findings=checked.findings, source=kind, attempt=2)
    except SessionEnded as ended:
        _end_planning_early(task, ended)
        raise
    finally:
        if outcome is None:
            agent_release(agent=agent)
        else:
            sound = outcome.completed and checked is not None and checked.ok
            agent_record_result(agent=agent, outcome="completed" if sound else "failed", quality=1.0 if sound else 0.0,
                                duration=time.monotonic() - started, tokens=tokens, cost=cost, release=True)
    if not outcome.completed:
        error = {"type": (outcome.error or {}).get("type", "planning_failed"),
                 "message": (outcome.error or {}).get("message", "the planning turn failed"),
                 "context": {"task_id": task.pk, **((outcome.error or {}).get("context") or {})}}
        _fail(run, task, agent, error)
    if not checked.ok:
        _fail(run, task, agent, _invalid(task, checked.findings, "twice"))
    try:
        row = plan_propose(session=session, plan=plan_from_answer(outcome.text),
                           source="replan" if kind == "replan" else "planner", actor=run.actor)
    except ValidationFailed as refused:  # the repository's own check (symbolic links), or a key a kept task holds
        findings = getattr(refused, "findings", None)
        error = _invalid(task, findings, "when stored") if findings else {
            "type": "plan_invalid", "message": f"The plan could not be stored: {refused.message}",
            "context": {"task_id": task.pk, "details": refused.details}}
        _fail(run, task, agent, error)
    task_services.task_complete(task=task, output=outcome.text, result={
        "text": outcome.text, "opencode_session_id": outcome.opencode_session_id, "agent": agent.name,
        "plan_version": row.version, "replaces": list(replaces), "failure": failure,
    })
    run.record([("task.completed", {"task_id": task.pk, "title": task.title, "agent": agent.name,
                                    "plan_version": row.version})])
    _end_if_in_review(row)


def _invalid(task: Task, findings, when: str) -> dict:
    listed = "; ".join((f"[{', '.join(f.tasks)}] " if f.tasks else "") + f.message for f in findings)
    return {"type": "plan_invalid", "message": f"The planner's answer was refused {when}: {listed}"[:2000],
            "context": {"task_id": task.pk, "findings": [f.as_dict() for f in findings]}}


def _fail(run, task: Task, agent: Agent, error: dict) -> None:
    """The planning task fails with `error`, and the session with it (its typed error): the run ends."""
    task_services.task_fail(task=task, error=error)
    run.record([("task.failed", {"task_id": task.pk, "title": task.title, "agent": agent.name, "error": error})])
    run.fail_session(error_type=error["type"], message=error["message"], context=error["context"])
    if error["context"].get("retryable"):  # a provider's passing failure, as for any task (SessionRun.finish)
        session_retry_automatically(session_id=run.session_id, reason=f"automatic retry: {error['message']}")
    raise SessionEnded(S.FAILED, error["type"])


def _end_if_in_review(row) -> None:
    if row.status == PlanStatus.PROPOSED:  # plan_propose paused the session in plan_review
        raise SessionEnded(S.PAUSED, PLAN_REVIEW)


def _turn(run, task: Task, agent: Agent, *, prompt: str, kind: str, turn: int,
          opencode_session_id: str = "") -> TurnOutcome:
    events = TurnEvents(servers.events_of(run.server), str(run.worktree.path))
    planning = PlanningTurn(run, task, agent, events, prompt=prompt, opencode_session_id=opencode_session_id)
    run.record([("plan.turn", {"task_id": task.pk, "kind": kind, "turn": turn, "agent": agent.name,
                               "opencode_agent": PLANNER_OPENCODE_AGENT})])
    try:
        return planning.run(task)
    finally:
        events.stop()


def _route(run, task: Task) -> tuple[Agent, list]:
    """An agent with task_decomposition for the planning task (capacity reserved), waiting while every
    such agent is busy; none can ever take it: the task is skipped and the session fails (no_agent)."""
    while True:
        try:
            decision = agent_route(required_capabilities=list(task.required_capabilities), reserve=True)
        except NoAgentAvailable as error:
            if error.details.get("reason") not in NO_AGENT_EVER:
                run.check_control()
                run.guard.ending.wait(AGENT_RETRY_SECONDS)
                continue
            task_services.task_skip(task=task, reason=error.message)
            run.fail_session(error_type="no_agent", message=f"No agent can plan the work: {error.message}",
                             context={"task_id": task.pk, **(error.details or {})})
            raise SessionEnded(S.FAILED, "no_agent") from error
        return decision.agent, [("task.routed", {
            "task_id": task.pk, "title": task.title, "agent": decision.agent.name, "score": decision.score,
            "reason": decision.reason,
            "alternatives": [{"agent": alt.agent.name, "score": alt.score} for alt in decision.alternatives],
        })]


def _end_planning_early(task: Task, ended: SessionEnded) -> None:
    """A pause or stop cut the planning turn short: the task is paused (or failed); the next run
    cancels it and plans afresh (_drop_unfinished_planning)."""
    task.refresh_from_db()
    if task.status != TaskStatus.IN_PROGRESS or ended.status in ("lost", "ending", "deleted"):
        return
    if ended.status in (S.PAUSED, S.STOPPED, S.TIMEOUT):
        task_services.task_pause(task=task)
    else:
        task_services.task_fail(task=task, error={"type": ended.status, "message": str(ended), "context": {}})


def _drop_unfinished_planning(run) -> None:
    """Planning tasks an earlier run left unfinished (paused, or a lost worker's) are cancelled, so the
    plan loop never runs one as work; a planning turn starts afresh when one is still needed."""
    for task in plan_planning_tasks(session=run.session):
        if task.status not in UNFINISHED:
            continue
        if task.status == TaskStatus.IN_PROGRESS:
            task_services.task_fail(task=task, error={"type": "interrupted", "context": {},
                                                      "message": "the run of this planning turn ended"})
        else:
            task_services.task_cancel(task=task, reason="the run of this planning turn ended")
        if task.status in (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS) and task.assigned_agent_id:
            agent_release(agent=task.assigned_agent)  # a lost worker's reservation
