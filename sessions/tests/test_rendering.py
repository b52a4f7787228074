"""Plain rendering helpers of the monitor: patches split per file, durations, typed reasons."""

from sessions import rendering

PATCH = """diff --git a/app/health.py b/app/health.py
new file mode 100644
index 0000000..e69de29
--- /dev/null
+++ b/app/health.py
@@ -0,0 +1,2 @@
+def health():
+    return {"ok": True}
diff --git a/README.md b/README.md
index 1111111..2222222 100644
--- a/README.md
+++ b/README.md
@@ -1,3 +1,3 @@
 # Demo
-old line
+new line
 end
diff --git a/logo.png b/logo.png
index 3333333..4444444 100644
Binary files a/logo.png and b/logo.png differ
"""


def test_a_patch_splits_into_its_files_with_each_line_classified():
    files = rendering.split_patch(PATCH)
    assert [f.path for f in files] == ["app/health.py", "README.md", "logo.png"]
    health, readme, logo = files
    assert [(line.kind, line.text) for line in health.lines] == [
        ("meta", "new file mode 100644"), ("hunk", "@@ -0,0 +1,2 @@"),
        ("add", "+def health():"), ("add", '+    return {"ok": True}'),
    ]
    assert (health.additions, health.deletions) == (2, 0)
    assert [line.kind for line in readme.lines] == ["hunk", "context", "del", "add", "context"]
    assert (readme.additions, readme.deletions) == (1, 1)
    # The ---/+++ header lines are not counted as a deletion and an addition.
    assert logo.binary and logo.additions == 0 and not logo.lines[1:]


def test_a_long_file_patch_is_collapsed_and_cut_past_its_limit():
    body = "\n".join(f"+line {n}" for n in range(50))
    patch = f"diff --git a/big.txt b/big.txt\n@@ -0,0 +1,50 @@\n{body}\n"
    short = rendering.split_patch(patch)[0]
    assert not short.collapsed and short.additions == 50
    cut = rendering.split_patch(patch, file_lines_max=20)[0]
    assert len(cut.lines) == 20 and cut.omitted_lines == 31 and cut.additions == 50
    body = "\n".join(f"-line {n}" for n in range(rendering.COLLAPSE_LINES + 1))
    assert rendering.split_patch(f"diff --git a/x b/x\n@@ -1 +0,0 @@\n{body}\n")[0].collapsed


def test_a_bare_hunk_body_belongs_to_the_default_path_only_when_given():
    assert rendering.split_patch("-old\n+new\n") == []
    (only,) = rendering.split_patch("-old\n+new\n", default_path="README.md")
    assert only.path == "README.md" and [line.kind for line in only.lines] == ["del", "add"]


def test_durations_read_as_people_say_them():
    assert [rendering.format_duration(s) for s in (0, 12.7, 245, 3725, -5, None)] == [
        "0s", "12s", "4m 05s", "1h 02m", "0s", "0s"]


def test_the_typed_reason_names_the_error_the_risk_or_the_transition():
    failed = rendering.status_reason(status="failed", error={"type": "no_task_completed", "message": "no task"},
                                     at_risk=False, last_transition=("fail", "no task"))
    assert failed == rendering.Reason("no_task_completed", "no task")
    risky = rendering.status_reason(status="running", error={}, at_risk=True, last_transition=("claim", "w1"))
    assert risky.code == "at_risk"
    paused = rendering.status_reason(status="paused", error={}, at_risk=False,
                                     last_transition=("pause", "soft budget limit reached"))
    assert paused == rendering.Reason("pause", "soft budget limit reached")
    assert rendering.status_reason(status="running", error={}, at_risk=False, last_transition=("claim", "w1")) is None
    assert rendering.status_reason(status="paused", error={}, at_risk=False, last_transition=None) is None
