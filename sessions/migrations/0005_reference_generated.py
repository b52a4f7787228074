# The reference becomes a column PostgreSQL/SQLite compute from the id on INSERT.
# Existing references were written by the same rule (IND- and the id, six digits at least),
# so dropping the stored column and adding the generated one keeps every value.

import django.db.models.functions.comparison
import django.db.models.functions.text
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("coding_sessions", "0004_queue_order"),
    ]

    operations = [
        migrations.RemoveField(model_name="codingsession", name="reference"),
        migrations.AddField(
            model_name="codingsession",
            name="reference",
            field=models.GeneratedField(
                db_persist=True,
                expression=django.db.models.functions.text.Concat(
                    models.Value("IND-"),
                    models.Case(
                        models.When(
                            id__lt=1000000,
                            then=django.db.models.functions.text.LPad(
                                django.db.models.functions.comparison.Cast("id", models.CharField()), 6, models.Value("0")
                            ),
                        ),
                        default=django.db.models.functions.comparison.Cast("id", models.CharField()),
                    ),
                ),
                output_field=models.CharField(max_length=20),
                unique=True,
            ),
        ),
    ]
