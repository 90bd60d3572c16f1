"""`rocmforge serve`: an OpenAI-compatible HTTP front end (FastAPI + uvicorn) over one rocmforge engine.

A front end like the CLI: it builds nothing itself but the HTTP layer; the model, sampling and batching
are the engine's (rocmforge_core.engine). Needs the `server` extra: pip install "rocmforge[server]".
"""
