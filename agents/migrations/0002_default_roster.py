"""Create the default roster (agents.roster.DEFAULT_ROSTER) on a fresh install.

The roster is frozen into this file's behaviour through `agents.roster`; an
agent an operator already created under the same name is left untouched.
"""

from django.db import migrations


def create_roster(apps, schema_editor):
    from agents.roster import DEFAULT_ROSTER
    from agents.routing import capability_mask

    Agent = apps.get_model("agents", "Agent")
    for entry in DEFAULT_ROSTER:
        fields = {key: value for key, value in entry.items() if key not in ("name", "capabilities")}
        fields["capability_mask"] = capability_mask(entry["capabilities"])
        Agent.objects.get_or_create(name=entry["name"], defaults=fields)


def remove_roster(apps, schema_editor):
    from agents.roster import DEFAULT_ROSTER

    Agent = apps.get_model("agents", "Agent")
    Agent.objects.filter(name__in=[entry["name"] for entry in DEFAULT_ROSTER], total_tasks=0).delete()


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial")]

    operations = [migrations.RunPython(create_roster, remove_roster)]
