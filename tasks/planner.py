"""The planner's prompt (plain Python): what a planning turn on OpenCode's read-only `plan` agent is asked.

One builder for every planning turn of a session: the first (the work and the repository's files),
a repair turn (the findings that refused its answer), a revision (the previous plan and the
reviewer's comment) and a replan (the plan, what completed, and the failure). Each asks for the plan
format of tasks.plans as one JSON object in a ```json fence.
"""

import json

from tasks.decomposition import CAPABILITIES
from tasks.plans import PROMPT_MAX_BYTES, TASKS_MAX, TASKS_MIN

FILES_LISTED = 2_000
FILES_TEXT_MAX = 80_000
FAILURE_OUTPUT_MAX = 8_000

EXAMPLE = {
    "summary": "one paragraph: the approach and why it is split this way",
    "tasks": [
        {
            "key": "schema", "title": "Design the books schema",
            "prompt": "what the agent must do, self-contained",
            "capabilities": ["system_design"],
            "files": ["books/models.py", "books/migrations/"],
            "estimate_hours": {"optimistic": 0.5, "likely": 1, "pessimistic": 2},
            "after": [],
            "acceptance": "python -m pytest books -q",
        }
    ],
}

FORMAT = f"""Answer with the plan as ONE JSON object in a ```json fence, in this format:

```json
{json.dumps(EXAMPLE, indent=2)}
```

Rules (a plan that breaks one is refused and sent back to you with the findings):
- {TASKS_MIN} to {TASKS_MAX} tasks. Small work stays ONE task: every split costs a turn and a merge.
- `key`: a unique slug (lowercase letters, digits, - and _). `after`: keys that must finish before this
  task starts; no cycles, no task after itself.
- `prompt`: everything the agent needs, self-contained (it does not see this plan), at most
  {PROMPT_MAX_BYTES // 1000} kB.
- `capabilities`: from {", ".join(sorted(CAPABILITIES))}.
- `files`: the paths (or directory prefixes ending in /) the task will change, relative to the
  repository root, never absolute and never with `..`. Split the work by the files each task owns:
  tasks that run at the same time each work in their own git worktree and are merged afterwards, so two
  tasks owning the same file are put one after the other.
- `estimate_hours`: optimistic <= likely <= pessimistic, in hours.
- `acceptance` (optional): a shell command, run in the task's worktree after its turn, that must
  succeed for the task to count as done."""


def _file_list(files):
    listed, size = [], 0
    for path in files[:FILES_LISTED]:
        size += len(path) + 1
        if size > FILES_TEXT_MAX:
            break
        listed.append(path)
    more = len(files) - len(listed)
    text = "\n".join(listed) if listed else "(the repository has no tracked files yet)"
    if more:
        text += f"\n... and {more} more (read the tree to see them)"
    return text


def planner_prompt(
    *,
    title: str,
    work: str,
    files: list,
    turn: int = 1,
    findings: list = (),
    previous_plan: dict | None = None,
    comment: str = "",
    completed: list = (),
    failure: dict | None = None,
) -> str:
    """The prompt of planning turn number `turn` (1 for the first) of a session.

    `files`: the repository's tracked paths (listed up to FILES_LISTED / FILES_TEXT_MAX). A repair
    turn passes the `findings` (tasks.plans.Finding) that refused the previous answer; a revision
    passes `previous_plan` and the reviewer's `comment`; a replan passes `previous_plan`, the keys
    of the `completed` tasks and the `failure` {task, error, output}. After the first turn the last
    line is `@@resume <turn - 1>`: the orchestrator saying how many planning turns came before, which
    the scripted demo model uses to pick its next `@@plan` answer (as for resumed tasks).
    """
    parts = [
        "You are planning, not implementing: read what you need of the repository (you cannot edit it), "
        "then split the work below into tasks that other agents will carry out.",
        f"## The work: {title}\n\n{work}",
        f"## Repository files\n\n{_file_list(list(files))}",
    ]
    if previous_plan is not None:
        parts.append("## Your previous plan\n\n```json\n" + json.dumps(previous_plan, indent=2) + "\n```")
    if comment:
        parts.append(f"## The reviewer sent it back with this comment\n\n{comment}\n\n"
                     "Propose the whole plan again, changed as the comment asks.")
    if failure is not None:
        output = str(failure.get("output") or "")[-FAILURE_OUTPUT_MAX:]
        parts.append(
            "## What happened\n\n"
            f"Completed tasks: {', '.join(completed) if completed else 'none'}.\n"
            f"Task {failure.get('task')} failed: {failure.get('error')}\n\n"
            + (f"Its last output:\n```\n{output}\n```\n\n" if output else "")
            + "Plan the REMAINING work only: do not repeat completed tasks and do not reuse their keys "
            "(their changes are already in the session's branch)."
        )
    if findings:
        listed = "\n".join(
            f"- {'[' + ', '.join(f.tasks) + '] ' if f.tasks else ''}{f.message}" for f in findings
        )
        parts.append(f"## Your last answer was refused\n\n{listed}\n\nAnswer again with a corrected plan.")
    parts.append(FORMAT)
    if turn > 1:
        parts.append(f"@@resume {turn - 1}")
    return "\n\n".join(parts)


def template_plan(*, title: str, work: str, template: str | None = None) -> dict:
    """A plan in the plan format from a decomposition template (tasks.decomposition, one level).

    The template is the one named or chosen from the title and the work, as the decomposition API
    does. Its finish-to-start steps become `after`; start-to-start ones are left out (the tasks may
    then run side by side, which that link allows). Templates know no files, so no file is owned
    and the overlap check orders nothing. Each prompt is the step, then the work (cut to fit).
    """
    from tasks.decomposition import plan_decomposition
    from tasks.graph import FINISH_TO_START

    decomposed = plan_decomposition(title=title, description=work, template=template, max_depth=1)
    keys = [_slug(planned.title, index) for index, planned in enumerate(decomposed.subtasks)]
    tasks = []
    for index, planned in enumerate(decomposed.subtasks):
        head = "\n\n".join(part for part in (planned.title, planned.description) if part)
        room = PROMPT_MAX_BYTES - len(head.encode()) - 200
        body = work.encode()[:max(0, room)].decode("utf-8", "ignore")
        tasks.append({
            "key": keys[index], "title": planned.title[:200],
            "prompt": f"{head}\n\nThe session's work, of which this task is one step:\n\n{body}",
            "capabilities": list(planned.capabilities), "files": [],
            "estimate_hours": {"optimistic": planned.estimate.optimistic, "likely": planned.estimate.likely,
                               "pessimistic": planned.estimate.pessimistic},
            "after": [keys[before] for before, kind in planned.depends_on if kind == FINISH_TO_START],
        })
    return {"summary": f"{decomposed.template} template: {decomposed.reason}"[:4000], "tasks": tasks}


def _slug(title, index):
    words = "".join(char if char.isalnum() else " " for char in title.lower()).split()
    return f"{index + 1}-" + "-".join(words)[:40].strip("-") if words else f"step-{index + 1}"
