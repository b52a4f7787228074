"""Issue 24, finding 8: the generated operator password never lands in bin/run's log. When the
output is not a terminal (a log file, a journal), only the path of a 0600 file holding it is
printed."""

import os
import subprocess
import sys

from django.conf import settings


def test_the_generated_password_is_kept_out_of_a_logged_output(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment["ORCHESTRATOR_VAR_DIR"] = str(tmp_path)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], cwd=settings.BASE_DIR, env=environment,
                   check=True, capture_output=True, timeout=300)
    log = tmp_path / "run.log"
    with open(log, "wb") as output:  # as `bin/run > run.log` would
        subprocess.run([*manage, "ensure_operator"], cwd=settings.BASE_DIR, env=environment, stdout=output,
                       stderr=subprocess.STDOUT, check=True, timeout=120)
    secret_file = tmp_path / "operator-password"
    password = secret_file.read_text().split("password: ")[1].strip()
    assert len(password) >= 12 and password not in log.read_text()
    assert str(secret_file) in log.read_text()
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    check = ("import django; django.setup(); from django.contrib.auth import authenticate; "
             f"print(authenticate(username='operator', password={password!r}) is not None)")
    result = subprocess.run([sys.executable, "-c", check], cwd=settings.BASE_DIR, env={
        **environment, "DJANGO_SETTINGS_MODULE": "orchestrator.settings"}, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("True"), result.stderr
