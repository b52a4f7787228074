"""Adapter to a pinned OpenCode server (1.18.33) and the project's scripted LLM.

- `client`: a thin httpx client of the v1 HTTP routes, with typed errors (`errors`).
- `events`: the SSE event stream, with reconnect and state rebuild.
- `server`: starts, watches and stops `opencode serve` (or wraps an existing server).
- `scripted_llm`: an OpenAI-compatible LLM scripted by `@@` directives in the prompt, for tests,
  benchmarks and the demo model of a fresh install.

Nothing here touches Django models; settings are only read for defaults.
"""
