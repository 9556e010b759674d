"""The search page: search, narrow by facets, page through, like or dislike results, and watch the
served model retrain.

The page is one HTML file plus a little JavaScript (no build step). Everything the browser
calls lives on the reranker's own origin:

- `/api/feedback` and `/api/interactions` forward a like/dislike, or an open and its dwell, to the
  collector unchanged (body, status, error message), so the browser needs neither the
  collector's address (internal in compose and Kubernetes) nor CORS, and the collector keeps the
  only copy of the validation rules; where feedback writes need a key, they add
  `EDURANKER_PAGE_FEEDBACK_KEY` (or pass the caller's own);
- `/go/{inference_id}/{resource_id}` records an open and redirects to the resource's catalogue URL,
  for clients without the page's script;
- `/api/ui/status` gathers the served model, the aggregator's training progress and the
  recent training runs, each with a short timeout, and says which part is down;
- `/reports/{version}` serves a registry version's `report.html`, resolved by the registry.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from services.reranker.deps import HolderDep, loaded_holder
from services.reranker.holder import ModelHolder
from shared.ml.registry import Registry, RegistryError
from shared.settings import Settings
from shared.store import Store, StoreUnavailableError
from shared.web.deps import SettingsDep, StoreDep

log = logging.getLogger(__name__)
router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
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


def page_config(facets: Sequence[str] = (), languages: Sequence[str] = ()) -> dict[str, Any]:
    """What the script needs; relative URLs so the page also works behind a path prefix. `facets`:
    the filterable fields it shows checkboxes for; `languages`: the catalogue's (a choice where
    there are several)."""
    return {"searchUrl": "api/reranking/search-with-reranking", "feedbackUrl": "api/feedback",
            "interactionsUrl": "api/interactions",
            "statusUrl": "api/ui/status", "reportsUrl": "reports/", "pollMs": POLL_INTERVAL_MS,
            "topK": 10, "facets": list(facets), "languages": list(languages)}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request, settings: SettingsDep) -> HTMLResponse:
    holder = loaded_holder(request.app)
    languages = holder.state.index.languages if holder is not None else ()
    config = html.escape(json.dumps(page_config(settings.filter_fields, languages)), quote=True)
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


def model_view(holder: ModelHolder | None) -> dict[str, Any] | None:
    if holder is None:
        return None
    info = holder.info()
    keep = ("version", "kind", "base_model", "trained_at", "loaded_at", "metrics", "weights",
            "inferences_served", "catalogue_size", "pinned", "click_model")
    return {k: info.get(k) for k in keep}


async def fetch_stats(settings: Settings) -> dict[str, Any]:
    url = f"{aggregator_url(settings)}/stats"
    async with httpx.AsyncClient(timeout=STATUS_TIMEOUT_S) as client:
        response = await client.get(url)
    response.raise_for_status()
    return response.json()


async def last_decision(store: Store) -> dict[str, Any] | None:
    """The latest experiment users (or an operator) ended: what was decided, and why."""
    experiments = await asyncio.wait_for(store.list_experiments(limit=5), STATUS_TIMEOUT_S)
    ended = next((e for e in experiments if e.status == "ended"), None)
    if ended is None:
        return None
    return {k: v for k, v in ended.model_dump(mode="json").items()
            if k in ("experiment_id", "kind", "champion", "challenger", "decision", "reason", "ended_at")}


async def fetch_runs(store: Store, registry: Registry) -> list[dict[str, Any]]:
    runs = await asyncio.wait_for(store.list_training_runs(limit=RECENT_RUNS), STATUS_TIMEOUT_S)
    return [run_view(r.model_dump(mode="json"), registry) for r in runs]


@router.get("/api/ui/status", tags=["page"])
async def ui_status(request: Request, settings: SettingsDep, store: StoreDep) -> dict[str, Any]:
    """Served model, progress toward the next training, the running experiment and the last
    decision, recent runs; a part that is down is reported in `errors`, the others still come."""
    registry = Registry(settings.model_dir)
    errors: dict[str, str] = {}
    model = model_view(loaded_holder(request.app))
    if model is None:
        errors["model"] = "the model is still loading"
    stats, runs, last = await asyncio.gather(fetch_stats(settings), fetch_runs(store, registry),
                                             last_decision(store), return_exceptions=True)
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
async def report(version: str, settings: SettingsDep) -> FileResponse:
    """A version's training report; only registry version folders (`v0001`...) are served."""
    registry = Registry(settings.model_dir)
    try:
        folder = registry.resolve(version)
    except RegistryError as exc:
        raise HTTPException(404, f"no report for {version!r}: {exc}; versions look like v0001") from None
    path = folder / "report.html"
    if not path.is_file():
        raise HTTPException(404, f"version {folder.name} has no report.html")
    return FileResponse(path, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"{what} body larger than {limit} bytes: send one {what} at a time")
    return bytes(body)


async def forward(request: Request, settings: Settings, path: str, what: str) -> Response:
    """Sends the request's body on to the collector's `path` and answers what it answered."""
    body = await read_limited(request, MAX_FEEDBACK_BYTES, what)
    headers = {name: value for name in FORWARDED_HEADERS if (value := request.headers.get(name))}
    if request.client:
        headers["x-forwarded-for"] = request.client.host
    upstream = await post_to_collector(settings, path, what, body, headers)
    return Response(upstream.content, status_code=upstream.status_code,
                    media_type=upstream.headers.get("content-type", "application/json"))


async def post_to_collector(settings: Settings, path: str, what: str, body: bytes,
                            headers: dict[str, str]) -> httpx.Response:
    """POSTs `body` to the collector's `path` with the page's key (server side only: never in the
    page); the collector unreachable is a 503 saying nothing was saved."""
    headers = {"content-type": "application/json", **headers}
    if key := settings.page_feedback_key.get_secret_value():
        headers["x-api-key"] = key
    url = f"{settings.collector_url.rstrip('/')}{path}"
    try:
        async with httpx.AsyncClient(timeout=FEEDBACK_TIMEOUT_S) as client:
            return await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("event=forward_failed what=%s url=%s error=%r", what, url, str(exc)[:200])
        raise HTTPException(503, f"the feedback service is unreachable, so this {what} was not saved: "
                                 "try again in a moment", headers={"Retry-After": "5"}) from None


@router.post("/api/feedback", tags=["feedback"])
async def forward_feedback(request: Request, settings: SettingsDep) -> Response:
    """Same body and answers as the collector's `POST /api/feedback`, which this forwards to."""
    return await forward(request, settings, "/api/feedback", "feedback")


@router.post("/api/interactions", tags=["interactions"])
async def forward_interaction(request: Request, settings: SettingsDep) -> Response:
    """Same body and answers as the collector's `POST /api/interactions` (the page's opens and
    returns, sent as beacons), which this forwards to."""
    return await forward(request, settings, "/api/interactions", "open")


@router.get("/go/{inference_id}/{resource_id}", tags=["interactions"], status_code=303,
            response_class=RedirectResponse)
async def go(inference_id: str, resource_id: str, request: Request, settings: SettingsDep,
             holder: HolderDep, session_id: str | None = None, user_id: str | None = None) -> Response:
    """A link that records the open, then sends the browser to the resource: for clients that cannot
    run the page's script (an e-mail, a plain HTML list). It goes only to the catalogue's URL of a
    resource the collector confirms was shown in that search, never to a URL the request names."""
    body = {"inference_id": inference_id, "resource_id": resource_id, "session_id": session_id,
            "user_id": user_id}
    sent = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
    upstream = await post_to_collector(settings, "/api/interactions", "open", sent, {})
    if upstream.status_code != 200:
        detail = upstream.json().get("detail") if upstream.headers.get("content-type", "").startswith(
            "application/json") else upstream.text[:300]
        raise HTTPException(upstream.status_code, detail or "the open was refused")
    index = holder.state.index
    position = index.position.get(resource_id)
    target = index.resources[position].url if position is not None else None
    if not target or not target.lower().startswith(("https://", "http://")):
        raise HTTPException(404, f"resource {resource_id!r} has no web address (http or https) in the "
                                 "catalogue")
    return RedirectResponse(target, status_code=303)
