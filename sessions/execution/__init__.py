"""The execution engine: runs claimed sessions on OpenCode (see runner.py)."""


def run_session(*, session):
    # Imported on call: the engine pulls in OpenCode clients a web process never needs.
    from sessions.execution.runner import run_session as run

    return run(session=session)
