"""EduRanker's HTTP API as a developer's tools call it: search, feedback, the served model, and the
aggregator's and trainer's endpoints an operator reads.

The one client of `python -m tools.cli traffic`, `make loadtest` and every benchmark that plays
searches and feedback through the services (`bench/`). Each service's address is given apart, as
they run apart; a call to one that was not given is a `ValueError` that says which.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

SEARCH = "/api/reranking/search-with-reranking"
MODEL_INFO = "/api/reranking/info-modele"
FEEDBACK = "/api/feedback"
FEEDBACK_BATCH = "/api/feedback/batch"
INTERACTIONS_BATCH = "/api/interactions/batch"
SERVICES = ("reranker", "collector", "aggregator", "trainer")


class Refused(Exception):
    """A service answered with a status other than 2xx: the status, its message and its body."""

    def __init__(self, what: str, response: httpx.Response) -> None:
        self.status = response.status_code
        self.text = response.text
        try:
            self.detail = response.json().get("detail")
        except ValueError:
            self.detail = self.text[:300]
        super().__init__(f"{what} refused ({self.status}): {self.text[:300]}")


class Addressed(Protocol):
    """Anything that knows each service's URL, such as `tools.localstack.LocalStack`."""

    def url(self, service: str) -> str: ...


def feedback_body(inference_id: str, resource_id: str, label: str, **fields: Any) -> dict[str, Any]:
    """A feedback item as `/api/feedback` (and each item of the batch endpoint) takes it; `fields`
    left None are not sent."""
    return {"inference_id": inference_id, "resource_id": resource_id, "feedback": label,
            **{k: v for k, v in fields.items() if v is not None}}


class Client:
    """Synchronous calls over one `httpx.Client` (keep-alive), which `close` (or `with`) ends."""

    def __init__(self, reranker: str | None = None, collector: str | None = None,
                 aggregator: str | None = None, trainer: str | None = None, timeout: float = 30.0) -> None:
        self.urls = {name: url.rstrip("/") for name, url in zip(
            SERVICES, (reranker, collector, aggregator, trainer), strict=True) if url}
        self.http = httpx.Client(timeout=timeout)

    @classmethod
    def of(cls, stack: Addressed, timeout: float = 30.0) -> Client:
        """A client of every service of a running stack."""
        return cls(*(stack.url(name) for name in SERVICES), timeout=timeout)

    def url(self, service: str, path: str) -> str:
        if service not in self.urls:
            raise ValueError(f"no address given for the {service}")
        return self.urls[service] + path

    def search(self, query_text: str, top_k: int = 10, use_reranker: bool = True,
               candidates: int | None = None, **narrowing: Any) -> dict[str, Any]:
        """The reranker's answer: `inference_id`, `results` (top first), `model_version`, ...;
        `Refused` when it answers with an error. `narrowing`: `filters`, `facets`, `offset`,
        `language`, `ranking_id`, and who searches (`user_id`, `session_id`), as the search request
        takes them."""
        body: dict[str, Any] = {"query_text": query_text, "use_reranker": use_reranker, "top_k": top_k,
                                **narrowing}
        if candidates is not None:
            body["candidates"] = candidates
        return self._json("search", self.http.post(self.url("reranker", SEARCH), json=body))

    def feedback(self, inference_id: str, resource_id: str, label: str, **fields: Any) -> dict[str, Any]:
        """Likes or dislikes a shown result (`fields`: user_id, session_id, is_test, ...); the
        collector's answer, or `Refused`."""
        body = feedback_body(inference_id, resource_id, label, **fields)
        return self._json("feedback", self.http.post(self.url("collector", FEEDBACK), json=body))

    def interactions(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Opens of shown results and how long people stayed (`inference_id`, `resource_id`,
        `dwell_s`, user_id or session_id), up to 500 at once; `Refused` unless every one is stored."""
        answer = self._json("interactions", self.http.post(self.url("collector", INTERACTIONS_BATCH),
                                                            json={"items": items}))
        refused = [r for r in answer["results"] if not r["ok"]]
        if refused:
            raise ValueError(f"{len(refused)} of {len(items)} interactions refused: {refused[0]['error']}")
        return answer

    def model_info(self) -> dict[str, Any]:
        """What the reranker serves: version, kind, backend, the running experiment, ..."""
        return self._json("model info", self.http.get(self.url("reranker", MODEL_INFO)))

    def stats(self) -> dict[str, Any]:
        """What the aggregator counts."""
        return self._json("aggregator stats", self.http.get(self.url("aggregator", "/stats")))

    def admin(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The trainer's admin API (`path` after `/admin`), as an operator calls it."""
        response = self.http.request(method, self.url("trainer", f"/admin{path}"), **kwargs)
        return self._json(f"{method} /admin{path}", response)

    @staticmethod
    def _json(what: str, response: httpx.Response) -> dict[str, Any]:
        if not response.is_success:
            raise Refused(what, response)
        return response.json()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
