"""Creates a small git repository under the first allowed repository root, once.

Sessions may only work on repositories under REPOSITORY_ROOTS; a fresh install
has none, so this gives the console something to run a first session on.
"""

from django.conf import settings
from django.core.management.base import BaseCommand

from sessions.execution.workspace import init_repository

README = """# Demo repository

Created by Industrial Orchestrator for a first session. With the scripted demo model,
try a prompt such as:

    Add a greeting.
    @@write hello.py print("hello from the orchestrator")\\n
    @@bash python3 hello.py
    @@final Added hello.py and ran it.
"""


class Command(BaseCommand):
    help = "Create var/repos/demo (a git repository sessions may work on) if it does not exist."

    def handle(self, *args, **options):
        path = settings.REPOSITORY_ROOTS[0] / "demo"
        if (path / ".git").exists():
            self.stdout.write(f"Demo repository: {path}")
            return
        init_repository(path, {"README.md": README})
        self.stdout.write(self.style.SUCCESS(f"Created the demo repository: {path}"))
