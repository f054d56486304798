"""The adapter into vLLM: scheduler (EngineCore process), worker (worker process), control server.

Nothing here decides anything: decisions come from `specserve_engine.policy`.
"""
