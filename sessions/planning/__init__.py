"""Planning a session: its planning options, its plan (versions, review) and the plan API.

`options` (plain rules), `services` (every write: plans supplied at creation, proposed by the
engine, replaced, approved, sent back), `selectors` (the plan as the API shows it), `api` (DRF).
The plan format and its checks are `tasks.plans`; storing a plan as the task graph is `tasks.planning`.
"""
