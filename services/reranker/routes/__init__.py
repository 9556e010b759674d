"""The reranker's HTTP routes, one module per resource: `search` (search, rerank, the served model),
`catalogue` (resources), `page` (the search page and what it calls)."""
