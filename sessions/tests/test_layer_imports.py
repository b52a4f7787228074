"""Which layer may import which (issue 21, item 4): the Channels consumers never import a views
module (what they render comes from rendering modules both use, e.g. sessions/panels.py), and views
never import an API module (what both need, e.g. the list's query parameters, lives in a shared
module, sessions/filters.py). Imports inside functions count as much as those at the top."""

from sessions.tests.test_import_direction import PACKAGES, ROOT, imports_of, project_modules


def view_modules(modules):
    """Modules whose functions are routed: each `*.views`, and every project module a urls.py imports."""
    found = {name for name in modules if name.rpartition(".")[2] == "views"}
    for name, path in modules.items():
        if name.rpartition(".")[2] != "urls":
            continue
        for module, names in imports_of(path, name):
            if module is not None and module.split(".")[0] in PACKAGES:
                found.update(targets(module, names, modules))
    return found


def targets(module, names, modules):
    """The project modules an import statement loads for its names: `from sessions import monitor`
    names sessions.monitor (not the package), `from sessions.monitor import x` names sessions.monitor."""
    submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
    return submodules or ([module] if module in modules else [])


def imported_modules(path, name, modules):
    """The project modules `name` imports (`from sessions import monitor` imports sessions.monitor)."""
    for module, names in imports_of(path, name):
        if module is not None:
            yield from targets(module, names, modules)


def offenders(importers, forbidden, modules):
    return sorted(f"{name} imports {target}" for name in importers
                  for target in imported_modules(modules[name], name, modules) if target in forbidden)


def test_the_views_modules_are_found_from_the_url_configurations():
    views = view_modules(project_modules())
    assert {"sessions.views", "sessions.monitor", "sessions.plan_review", "agents.views"} <= views
    assert "sessions.panels" not in views and "sessions.api" not in views


def test_no_consumers_module_imports_a_views_module():
    modules = project_modules()
    consumers = [name for name in modules if name.rpartition(".")[2] == "consumers"]
    assert "sessions.consumers" in consumers
    assert offenders(consumers, view_modules(modules), modules) == []


def test_no_views_module_imports_an_api_module():
    modules = project_modules()
    apis = {name for name in modules if name.rpartition(".")[2] == "api"}
    assert {"sessions.api", "sessions.planning.api"} <= apis
    assert offenders(sorted(view_modules(modules)), apis, modules) == []


def test_the_scan_sees_a_forbidden_import(tmp_path):
    # The scan itself: a consumers module importing the monitor's views is reported.
    path = tmp_path / "consumers.py"
    path.write_text("from sessions import monitor\n\ndef later():\n    from sessions.views import session_list\n")
    modules = {**project_modules(), "fake.consumers": path}
    assert offenders(["fake.consumers"], view_modules(project_modules()), modules) == [
        "fake.consumers imports sessions.monitor", "fake.consumers imports sessions.views"]
    assert ROOT.is_dir()
