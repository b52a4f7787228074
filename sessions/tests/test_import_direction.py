"""How the project's modules import each other (STYLE.md: one import direction, public names).

Services import jobs at module level; jobs import services and the execution engine inside their
bodies. So loading the services (a web process, the admin, the API) never loads the engine, and no
module needs an import inside a function to break a cycle.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
PACKAGES = ("agents", "contexts", "orchestrator", "sessions", "tasks")


def project_modules():
    """{dotted name: path} of the project's modules, without tests and migrations."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "tests" in parts or "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path, name, *, top_level_only=False):
    """(imported module, [names]) of the module's import statements: those at its top level (what
    runs when it is imported; `if TYPE_CHECKING:` blocks aside), or with top_level_only=False also
    those inside its functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module
            yield module, [alias.name for alias in node.names]


def test_importing_the_services_does_not_load_the_execution_engine():
    # A fresh interpreter: this test process has long loaded the engine through other tests.
    code = (
        "import sys, django; django.setup(); import sessions.services, sessions.selectors, sessions.admin; "
        "print(sorted(m for m in sys.modules if m == 'sessions.execution' or m.startswith('sessions.execution.')))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "orchestrator.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_job_module_imports_no_service_at_module_level():
    imported = {module for module, _ in imports_of(ROOT / "sessions" / "jobs.py", "sessions.jobs", top_level_only=True)}
    assert not {module for module in imported if module.startswith("sessions.") and module != "sessions.models"}


def test_no_module_imports_a_private_name_of_another_module():
    offenders = []
    for name, path in project_modules().items():
        for module, names in imports_of(path, name):
            if module is None or module.split(".")[0] not in PACKAGES or module == name:
                continue
            offenders += [f"{name}: from {module} import {imported}" for imported in names
                          if imported.startswith("_") and not imported.startswith("__")]
    assert offenders == []


def test_the_modules_import_each_other_without_a_cycle():
    """Imports inside functions count as much as those at the top (an import moved into a function
    to break a cycle still makes one), except those of the Celery job modules: a job importing its
    services in its body is the one direction allowed back."""
    modules = project_modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in imports_of(path, name, top_level_only=name.endswith(".jobs")):
            if module is None:
                continue
            # `from sessions import services` imports the module sessions.services.
            targets = [f"{module}.{imported}" for imported in names if f"{module}.{imported}" in modules]
            targets += [module] if module in modules else []
            graph[name].update(target for target in targets if target != name)
    # Tarjan's strongly connected components: any with more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []
