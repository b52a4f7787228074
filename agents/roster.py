"""The default roster a fresh install starts with, so sessions run with no configuration.

Together the roster holds all 26 capabilities, and AGENT-GENERALIST holds every
one of them, so a task whose required capabilities span several specialities
(code_generation + security_audit, say) still has a candidate. Specialists win
ties only through the caller's preferred type; the generalist's smaller
capacity makes its load term drop sooner, which steers work to specialists.
Plain data: the data migration and tests both read it.
"""

from agents.routing import CAPABILITIES

READ_ONLY_TOOLS = {"edit": False, "write": False, "patch": False, "bash": False}

DEFAULT_ROSTER = (
    {
        "name": "AGENT-ARCHITECT",
        "agent_type": "architect",
        "opencode_agent": "plan",
        "temperature": 0.3,
        "capabilities": [
            "requirements_analysis",
            "system_design",
            "architecture_planning",
            "task_decomposition",
            "documentation",
        ],
        "description": "Designs the solution and breaks the work into tasks; does not edit files.",
        "system_prompt": "You are the architect. Analyse the requirements, design the structure, "
        "and produce a concrete plan of small tasks. Do not change files.",
    },
    {
        "name": "AGENT-IMPLEMENTER",
        "agent_type": "implementer",
        "opencode_agent": "build",
        "temperature": 0.2,
        "capabilities": [
            "code_generation",
            "test_generation",
            "testing",
            "refactoring",
            "documentation",
            "configuration",
        ],
        "description": "Writes and changes code with its tests.",
        "system_prompt": "You are the implementer. Write working code with tests, run the tests, "
        "and keep the change focused on the task.",
    },
    {
        "name": "AGENT-DEBUGGER",
        "agent_type": "debugger",
        "opencode_agent": "build",
        "temperature": 0.1,
        "capabilities": ["debugging", "bug_fixing", "troubleshooting", "root_cause_analysis", "testing"],
        "description": "Reproduces failures, finds the root cause and fixes it.",
        "system_prompt": "You are the debugger. Reproduce the failure first, find its root cause, "
        "fix it, and add a test that fails without the fix.",
    },
    {
        "name": "AGENT-REVIEWER",
        "agent_type": "reviewer",
        "opencode_agent": "plan",
        "temperature": 0.1,
        "tools": READ_ONLY_TOOLS,
        "capabilities": ["code_review", "security_audit", "compliance_check", "performance_analysis", "documentation"],
        "description": "Reviews changes for correctness, security and compliance; read-only.",
        "system_prompt": "You are the reviewer. Read the change and report defects, security issues "
        "and compliance gaps with file and line. You cannot and must not edit files.",
    },
    {
        "name": "AGENT-TESTER",
        "agent_type": "implementer",
        "opencode_agent": "build",
        "temperature": 0.1,
        "capabilities": ["test_generation", "testing", "bug_fixing", "compliance_check"],
        "description": "Writes and runs tests, and fixes what they reveal.",
        "system_prompt": "You are the tester. Write tests that pin the required behaviour, run them, "
        "and report or fix what fails.",
    },
    {
        "name": "AGENT-INTEGRATOR",
        "agent_type": "integrator",
        "opencode_agent": "build",
        "temperature": 0.2,
        "capabilities": ["deployment", "configuration", "monitoring", "scaling", "conflict_resolution", "testing"],
        "description": "Integrates changes, resolves conflicts, configures and deploys.",
        "system_prompt": "You are the integrator. Merge the pieces, resolve conflicts, wire the "
        "configuration and deployment, and check that the whole still works.",
    },
    {
        "name": "AGENT-ORCHESTRATOR",
        "agent_type": "orchestrator",
        "opencode_agent": "general",
        "temperature": 0.2,
        "capabilities": [
            "workflow_orchestration",
            "resource_allocation",
            "progress_tracking",
            "task_decomposition",
            "conflict_resolution",
        ],
        "description": "Coordinates multi-step work and tracks its progress.",
        "system_prompt": "You are the orchestrator. Sequence the work, allocate it, and keep an "
        "accurate account of progress.",
    },
    {
        "name": "AGENT-ANALYST",
        "agent_type": "analyst",
        "opencode_agent": "plan",
        "temperature": 0.3,
        "capabilities": [
            "requirements_analysis",
            "performance_analysis",
            "root_cause_analysis",
            "compliance_check",
            "monitoring",
        ],
        "description": "Analyses requirements, behaviour and measurements; does not edit files.",
        "system_prompt": "You are the analyst. Investigate and measure, then report findings with evidence.",
    },
    {
        "name": "AGENT-OPTIMIZER",
        "agent_type": "optimizer",
        "opencode_agent": "build",
        "temperature": 0.2,
        "capabilities": ["optimization", "performance_analysis", "refactoring", "scaling"],
        "description": "Makes code faster and leaner without changing behaviour.",
        "system_prompt": "You are the optimizer. Measure before and after; change only what the "
        "measurements justify, and keep behaviour identical.",
    },
    {
        "name": "AGENT-GENERALIST",
        "agent_type": "implementer",
        "opencode_agent": "build",
        "temperature": 0.2,
        "max_concurrent_tasks": 3,
        "capabilities": list(CAPABILITIES),
        "description": "Fallback for tasks whose capabilities span several specialities.",
        "system_prompt": "You are a senior engineer. Complete the task end to end: understand it, "
        "change the code, and verify the result.",
    },
)
