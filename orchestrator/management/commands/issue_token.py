"""Issue an API token for a user and print it (once: only its digest is stored)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from orchestrator.tokens import token_issue


class Command(BaseCommand):
    help = "Issue an API token for USERNAME and print it; it cannot be shown again."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what will use the token, e.g. 'CI pipeline'")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}")
        _, raw = token_issue(user=user, name=name)
        self.stdout.write(raw)
