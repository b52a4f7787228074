"""Creates the first operator account of a fresh install.

The password is generated once, when the account is created. On a terminal it is printed
there; when the output goes anywhere else (bin/run's output kept in a log file, a service
manager's journal) it is written to a file only the owner can read, and only its path is
printed, so no log keeps it. It is never printed again (reset it with `manage.py changepassword`).
"""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from orchestrator.roles import OPERATORS, ensure_role_groups


class Command(BaseCommand):
    help = "Create an operator account (superuser in the operators group) if none exists; print its login once."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="operator")
        parser.add_argument("--email", default="operator@localhost")
        parser.add_argument(
            "--password", default=None, help="Use this password instead of a generated one (first creation only)."
        )

    def handle(self, *args, username, email, password, **options):
        User = get_user_model()
        with transaction.atomic():
            ensure_role_groups()
            user = User.objects.filter(username=username).first()
            if user is not None:
                self.stdout.write(
                    f"Operator account '{username}' exists; its password was printed when it was created "
                    f"(reset it with: .venv/bin/python manage.py changepassword {username})."
                )
                return
            password = password or secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=username, email=email, password=password)
            user.groups.add(Group.objects.get(name=OPERATORS))
        if self._to_terminal():
            self.stdout.write(self.style.SUCCESS("Created the operator account (shown only this once):"))
            self.stdout.write(f"  username: {username}")
            self.stdout.write(f"  password: {password}")
            return
        path = Path(settings.VAR_DIR) / "operator-password"
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"username: {username}\npassword: {password}\n")
        self.stdout.write(self.style.SUCCESS(f"Created the operator account '{username}'."))
        self.stdout.write(f"  its password is in {path} (readable by you only): read it, then delete the file")

    def _to_terminal(self):
        stream = getattr(self.stdout, "_out", None)
        return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
