"""The search page: search, like or dislike results, and watch the served model retrain.

The page is one HTML file plus a little JavaScript (no build step). Everything the browser
calls lives on the reranker's own origin:

- `/api/feedback` forwards the click to the collector unchanged (body, status, error
  message), so the browser needs neither the collector's address (internal in compose and
  Kubernetes) nor CORS, and the collector keeps the only copy of the validation rules; where
  feedback writes need a key, it adds `EDURANKER_PAGE_FEEDBACK_KEY` (or passes the caller's own);
- `/api/ui/status` gathers the served model, the aggregator's training progress and the
  recent training runs, each with a short timeout, and says which part is down;
- `/reports/{version}` serves a registry version's `report.html`, resolved by the registry.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from shared.ml.registry import Registry, RegistryError
from shared.settings import Settings
from shared.store import StoreUnavailableError

log = logging.getLogger(__name__)
router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parent / "static"
POLL_INTERVAL_MS = 3000
STATUS_TIMEOUT_S = 1.5
# The collector waits up to ~2 s for an inference record written a moment ago.
FEEDBACK_TIMEOUT_S = 10.0
MAX_FEEDBACK_BYTES = 16_384
RECENT_RUNS = 6
# Access rules travel with the request: the page adds no credentials of its own.
FORWARDED_HEADERS = ("content-type", "authorization", "x-api-key", "x-request-id")
RUN_METRICS = ("ndcg@10", "mrr@10")

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Reports are written by the trainer: inline CSS and embedded PNGs, never scripts.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
}


def add_page(app: FastAPI) -> None:
    """Mounts the page, its JSON endpoints and its static files on the reranker."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@lru_cache(maxsize=1)
def page_template() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def page_config() -> dict[str, Any]:
    """What the script needs; relative URLs so the page also works behind a path prefix."""
    return {"searchUrl": "api/reranking/search-with-reranking", "feedbackUrl": "api/feedback",
            "statusUrl": "api/ui/status", "reportsUrl": "reports/", "pollMs": POLL_INTERVAL_MS,
            "topK": 10}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    config = html.escape(json.dumps(page_config()), quote=True)
    return HTMLResponse(page_template().replace("{{CONFIG}}", config), headers=PAGE_HEADERS)


def aggregator_url(settings: Settings) -> str:
    return (settings.aggregator_url or f"http://127.0.0.1:{settings.aggregator_port}").rstrip("/")


def progress_view(stats: dict[str, Any]) -> dict[str, Any]:
    """The aggregator's `/stats`, reduced to what a person needs to follow the next training."""
    counts, policy = stats.get("counts", {}), stats.get("policy", {})
    total, like, dislike = counts.get("total", 0), counts.get("like", 0), counts.get("dislike", 0)
    return {
        "new_feedback": counts.get("new_since_training", 0),
        "threshold": policy.get("min_new"),
        "new_like": counts.get("new_like", 0),
        "new_dislike": counts.get("new_dislike", 0),
        "total": total,
        "min_total": policy.get("min_total"),
        "like": like,
        "dislike": dislike,
        "like_ratio": like / total if total else None,
        "max_imbalance": policy.get("max_imbalance"),
        "training_requested": bool(stats.get("pending_request")),
        # The aggregator's own words for what holds the next training back.
        "blocked_by": policy.get("blocked_by"),
    }


def run_view(run: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """One training run for the page, with a report link only where the report exists."""
    metrics = run.get("metrics") or {}
    version = run.get("version")
    report_url = None
    if version:
        try:
            if (registry.resolve(version) / "report.html").is_file():
                report_url = f"reports/{version}"
        except RegistryError:
            pass
    return {
        "run_id": run.get("run_id"), "status": run.get("status"), "reason": run.get("reason"),
        "detail": run.get("detail"), "version": version, "pairs": run.get("pairs"),
        "started_at": run.get("started_at"), "finished_at": run.get("finished_at"),
        "metrics": {f"{who}_{name}": metrics[f"{who}_{name}"] for who in ("candidate", "champion", "bm25")
                    for name in RUN_METRICS if f"{who}_{name}" in metrics},
        "report_url": report_url,
    }


def model_view(request: Request) -> dict[str, Any] | None:
    holder = getattr(request.app.state, "holder", None)
    if holder is None or not holder.ready:
        return None
    info = holder.info()
    keep = ("version", "kind", "base_model", "trained_at", "loaded_at", "metrics", "weights",
            "inferences_served", "catalogue_size", "pinned")
    return {k: info.get(k) for k in keep}


async def fetch_stats(settings: Settings) -> dict[str, Any]:
    url = f"{aggregator_url(settings)}/stats"
    async with httpx.AsyncClient(timeout=STATUS_TIMEOUT_S) as client:
        response = await client.get(url)
    response.raise_for_status()
    return response.json()


async def last_decision(request: Request) -> dict[str, Any] | None:
    """The latest experiment users (or an operator) ended: what was decided, and why."""
    experiments = await asyncio.wait_for(request.app.state.store.list_experiments(limit=5), STATUS_TIMEOUT_S)
    ended = next((e for e in experiments if e.status == "ended"), None)
    if ended is None:
        return None
    return {k: v for k, v in ended.model_dump(mode="json").items()
            if k in ("experiment_id", "kind", "champion", "challenger", "decision", "reason", "ended_at")}


async def fetch_runs(request: Request, registry: Registry) -> list[dict[str, Any]]:
    runs = await asyncio.wait_for(request.app.state.store.list_training_runs(limit=RECENT_RUNS),
                                  STATUS_TIMEOUT_S)
    return [run_view(r.model_dump(mode="json"), registry) for r in runs]


@router.get("/api/ui/status", tags=["page"])
async def ui_status(request: Request) -> dict[str, Any]:
    """Served model, progress toward the next training, the running experiment and the last
    decision, recent runs; a part that is down is reported in `errors`, the others still come."""
    settings: Settings = request.app.state.settings
    registry = Registry(settings.model_dir)
    errors: dict[str, str] = {}
    model = model_view(request)
    if model is None:
        errors["model"] = "the model is still loading"
    stats, runs, last = await asyncio.gather(fetch_stats(settings), fetch_runs(request, registry),
                                             last_decision(request), return_exceptions=True)
    progress = experiment = None
    if isinstance(stats, BaseException):
        log.warning("event=ui_status_part_failed part=progress error=%r", str(stats)[:200])
        errors["progress"] = (f"the aggregator did not answer at {aggregator_url(settings)} "
                              f"({type(stats).__name__})")
    else:
        progress, experiment = progress_view(stats), stats.get("experiment")
    if isinstance(last, BaseException):
        last = None
    if isinstance(runs, BaseException):
        log.warning("event=ui_status_part_failed part=runs error=%r", str(runs)[:200])
        reason = "the store is unavailable" if isinstance(runs, StoreUnavailableError | TimeoutError) \
            else type(runs).__name__
        errors["runs"] = f"training runs unavailable: {reason}"
        runs = None
    return {"model": model, "progress": progress, "runs": runs, "experiment": experiment,
            "last_experiment": last, "errors": errors}


@router.get("/reports/{version}", response_class=HTMLResponse, tags=["page"])
async def report(version: str, request: Request) -> FileResponse:
    """A version's training report; only registry version folders (`v0001`...) are served."""
    registry = Registry(request.app.state.settings.model_dir)
    try:
        folder = registry.resolve(version)
    except RegistryError as exc:
        raise HTTPException(404, f"no report for {version!r}: {exc}; versions look like v0001") from None
    path = folder / "report.html"
    if not path.is_file():
        raise HTTPException(404, f"version {folder.name} has no report.html")
    return FileResponse(path, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)


async def read_limited(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"feedback body larger than {limit} bytes: send one feedback at a time")
    return bytes(body)


@router.post("/api/feedback", tags=["feedback"])
async def forward_feedback(request: Request) -> Response:
    """Same body and answers as the collector's `POST /api/feedback`, which this forwards to."""
    settings: Settings = request.app.state.settings
    body = await read_limited(request, MAX_FEEDBACK_BYTES)
    headers = {name: value for name in FORWARDED_HEADERS if (value := request.headers.get(name))}
    if request.client:
        headers["x-forwarded-for"] = request.client.host
    if key := settings.page_feedback_key.get_secret_value():  # server side only: never in the page
        headers["x-api-key"] = key
    url = f"{settings.collector_url.rstrip('/')}/api/feedback"
    try:
        async with httpx.AsyncClient(timeout=FEEDBACK_TIMEOUT_S) as client:
            upstream = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("event=feedback_forward_failed url=%s error=%r", url, str(exc)[:200])
        raise HTTPException(503, "the feedback service is unreachable, so this feedback was not saved: "
                                 "try again in a moment", headers={"Retry-After": "5"}) from None
    return Response(upstream.content, status_code=upstream.status_code,
                    media_type=upstream.headers.get("content-type", "application/json"))
