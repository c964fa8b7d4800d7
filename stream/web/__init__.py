"""The web dashboard: a Starlette app (pages, JSON API, live events) on uvicorn."""
