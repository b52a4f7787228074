"""Creates the first operator account of a fresh install.

The password is generated and printed once, when the account is created; it is
never stored in clear or printed again (reset it with `manage.py changepassword`).
"""

import secrets

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
        self.stdout.write(self.style.SUCCESS("Created the operator account (shown only this once):"))
        self.stdout.write(f"  username: {username}")
        self.stdout.write(f"  password: {password}")
