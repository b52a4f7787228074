"""Indexes for the session list's text search and tag filter (PostgreSQL only).

`title__icontains` compiles to `UPPER(title::text) LIKE UPPER(%s)` on
PostgreSQL; GIN indexes on the same UPPER(...) expressions with pg_trgm let
that LIKE '%term%' use an index. The tag filter is jsonb containment
(`tags @> '["db"]'`), served by a GIN index on tags. Other databases skip
this migration's work.
"""

from django.db import migrations

COLUMNS = ("title", "description", "initial_prompt")


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for column in COLUMNS:
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS session_{column}_trgm ON coding_sessions_codingsession "
            f'USING gin (UPPER("{column}"::text) gin_trgm_ops)'
        )
    schema_editor.execute(
        "CREATE INDEX IF NOT EXISTS session_tags_gin ON coding_sessions_codingsession USING gin (tags jsonb_path_ops)"
    )


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in COLUMNS:
        schema_editor.execute(f"DROP INDEX IF EXISTS session_{column}_trgm")
    schema_editor.execute("DROP INDEX IF EXISTS session_tags_gin")


class Migration(migrations.Migration):
    dependencies = [("coding_sessions", "0001_initial")]

    operations = [migrations.RunPython(create_indexes, drop_indexes, elidable=False)]
