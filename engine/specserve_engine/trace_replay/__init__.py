"""Trace-replay benchmark: replay the Azure conversation trace against OpenAI endpoints.

`trace` plans the requests (pure), `client` replays them and measures each one, `summary` turns
records into the per-level table and ratios (pure), `bootstrap` gives every number and ratio its
95% interval over rounds and requests (pure), `runner` starts one engine per configuration and
drives the levels, `plots` draws the figures. `specserve bench` is the command.
"""
