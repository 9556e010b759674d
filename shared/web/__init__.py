"""What every FastAPI service shares: request bodies and errors (http), dependencies, API keys."""
