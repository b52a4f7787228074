"""Cost of one /metrics scrape (the database-backed series are computed at scrape) on a large
database: 100,000 sessions in every status, 300,000 transitions, 1,000 agents, 500 pending
approvals. Prints the time of building the exposition (what the view does), over 20 scrapes.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/h4 .venv/bin/python -m bench.metrics_scrape
"""

import time

from bench.common import bench_database, summarize_ms

SESSIONS = 100_000
TRANSITIONS_PER_SESSION = 3
AGENTS = 1_000
PENDING_APPROVALS = 500
SCRAPES = 20


def populate(connection):
    from sessions.models import CodingSession, PermissionRequest, SessionTransition

    statuses = ["pending", "queued", "running", "paused", "completed", "partially_completed", "failed",
                "timeout", "stopped", "cancelled", "orphaned", "degraded"]
    sessions = CodingSession._meta.db_table
    transitions = SessionTransition._meta.db_table
    requests = PermissionRequest._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO {sessions} (title, description, session_type, priority, initial_prompt, repository,
                model_identifier, max_duration_seconds, max_retries, permission_policy, tags, metadata, status,
                created_at, updated_at, duration_seconds, attempt_seconds, retry_count, checkpoint_count,
                last_checkpoint_sequence, tokens_input, tokens_output, tokens_reasoning, tokens_cache_read,
                tokens_cache_write, cost, api_calls, error, result, opencode_session_id, opencode_server_url,
                workspace_path, branch_name, worker_id)
            SELECT 'Session ' || n, '', 'execution', n %% 5, 'prompt', '/srv/repos/r' || (n %% 50), '', 3600, 3,
                '{{}}', '[]', '{{}}', (%s::text[])[1 + n %% 12], now(), now(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                '{{}}', '{{}}', '', '', '', '', 'host-' || (n %% 20) || ':' || (1000 + n %% 20)
            FROM generate_series(1, %s) AS n
        """, [statuses, SESSIONS])
        cursor.execute(
            f"""
            INSERT INTO {transitions}
                (session_id, from_status, to_status, action, actor_kind, actor_label, reason, created_at)
            SELECT s.id, (ARRAY['pending','queued','running'])[1 + k], (ARRAY['queued','running','completed'])[1 + k],
                'start', 'system', '', '', now()
            FROM {sessions} s CROSS JOIN generate_series(0, %s) AS k
        """,
            [TRANSITIONS_PER_SESSION - 1],
        )
        cursor.execute(f"""
            INSERT INTO {requests} (session_id, opencode_id, opencode_session_id, permission, patterns, metadata,
                status, reply, created_at)
            SELECT s.id, 'per_' || s.id, '', 'bash', '[]', '{{}}', 'pending', '', now()
            FROM {sessions} s WHERE s.status = 'running' LIMIT %s
        """, [PENDING_APPROVALS])
        cursor.execute("ANALYZE")
    from agents.tests.factories import AgentFactory

    AgentFactory.create_batch(AGENTS, total_tokens=1000, model_identifier="provider/model")


def main():
    with bench_database() as connection:
        started = time.perf_counter()
        populate(connection)
        print(
            f"populated in {time.perf_counter() - started:.1f} s: {SESSIONS} sessions, "
            f"{SESSIONS * TRANSITIONS_PER_SESSION} transitions, {AGENTS} agents, {PENDING_APPROVALS} pending approvals"
        )
        from orchestrator.metrics import exposition

        exposition()  # warm: first query plans, imports
        timings = []
        for _ in range(SCRAPES):
            started = time.perf_counter()
            body = exposition()
            timings.append(time.perf_counter() - started)
        print(f"exposition: {len(body)} bytes")
        summarize_ms(f"/metrics exposition over {SCRAPES} scrapes", timings)


if __name__ == "__main__":
    main()
