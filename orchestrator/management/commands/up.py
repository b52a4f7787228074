"""Runs the whole orchestrator on this machine: web server and Celery worker.

The web server (daphne, HTTP + WebSocket) and the worker (threads pool, with
the beat scheduler embedded) are separate processes that share the database,
the broker and the channel layer: on the embedded default those are SQLite
files and a filesystem queue under var/; with REDIS_URL they are Redis.
Ctrl-C (or SIGTERM) stops every process this command started, by PID.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from orchestrator.process import stop_processes


class Command(BaseCommand):
    help = "Run the web server and a Celery worker (with beat) until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--concurrency", type=int, default=settings.WORKER_CONCURRENCY)
        parser.add_argument("--no-worker", action="store_true", help="Run the web server only.")

    def handle(self, *args, host, port, concurrency, no_worker, **options):
        python = sys.executable
        commands = {
            "web": [python, "-m", "daphne", "-b", host, "-p", str(port), "orchestrator.asgi:application"],
        }
        if not no_worker:
            commands["worker"] = [
                python, "-m", "celery", "-A", "orchestrator", "worker", "--beat",
                "--pool", "threads", "--concurrency", str(concurrency),
                "-Q", ",".join(settings.WORKER_QUEUES), "--loglevel", "INFO",
                "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ]
        processes = {}
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        for name, command in commands.items():
            # Each child leads its own process group so Ctrl-C reaches only this
            # command, which then stops the children in order.
            processes[name] = subprocess.Popen(command, cwd=settings.BASE_DIR, start_new_session=True)

        backend = "PostgreSQL" if settings.DATABASES["default"]["ENGINE"].endswith("postgresql") else "SQLite"
        transport = "Redis" if settings.REDIS_URL else "embedded (filesystem broker, SQLite channel layer)"
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"Industrial Orchestrator: http://{shown_host}:{port}/"))
        self.stdout.write("  login: the operator account printed above (default username 'operator')")
        self.stdout.write(f"  database: {backend}; broker and live updates: {transport}")
        if settings.OPENCODE_DEMO_MODEL:
            self.stdout.write("  LLM: the scripted DEMO model (no real LLM configured; set OPENCODE_CONFIG)")
        self.stdout.write("  processes: " + ", ".join(f"{name} pid {p.pid}" for name, p in processes.items()))
        self.stdout.write("  Ctrl-C stops everything.")

        exit_code = 0
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    self.stderr.write(f"{name} exited with code {process.returncode}; stopping the rest")
                    exit_code = process.returncode or 1
                    stopping = True
                    break
            time.sleep(0.2)
        stop_processes(list(processes.values()))
        self.stdout.write("Stopped.")
        sys.exit(exit_code)
