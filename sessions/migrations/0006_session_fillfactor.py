"""Leave room on the session table's pages for updated rows (PostgreSQL only).

A running session's row is updated a dozen times (usage per step, checkpoint sequence, runtime,
timestamps), mostly in columns no index covers. PostgreSQL can then write the new row version on the
same page without touching the indexes (a HOT update), but only when that page has room; otherwise
the update inserts an entry into each of the table's 19 indexes, the three trigram GIN indexes
among them. With the default fillfactor (100) 50 % of the session updates of a 20-session batch
were HOT, with 70 % 57 %: the rest change indexed columns (status, heartbeat). It applies to pages
written from now on (a table rewrite, VACUUM FULL, applies it to the old ones). Other databases skip it.
"""

from django.db import migrations

TABLE = "coding_sessions_codingsession"


def set_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} SET (fillfactor = 70)")


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("coding_sessions", "0005_reference_generated")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor, elidable=False)]
