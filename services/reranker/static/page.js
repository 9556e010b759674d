// EduRanker search page: search, narrow by facets, page through, like/dislike, and a panel that
// follows the served model.
// Plain browser JavaScript, no build step. Data from the API is only ever set as text.
(() => {
  "use strict";

  const config = JSON.parse(document.body.dataset.config);
  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = "eduranker.session_id";
  const METRICS = ["ndcg@10", "mrr@10", "accuracy", "precision", "recall", "f1", "auc"];

  const form = $("search-form");
  const input = $("query");
  const toggle = $("use-reranker");
  const resultsList = $("results");
  const searchStatus = $("search-status");
  const searchError = $("search-error");
  const announcer = $("announcer");
  const facetsBox = $("facets");
  const moreButton = $("more");
  const languageSelect = $("language");

  let lastSearch = null; // {query, useReranker, modelVersion, rankingId, shown, total}
  const filters = {}; // field -> Set of the values ticked (values OR, fields AND)
  let servedVersion = null;
  let lastDecision;  // undefined until the first status: a decision made before the page opened is not announced
  let seenRuns = null;
  let pollTimer = null;

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // randomUUID needs a secure context; getRandomValues does not (page opened over plain http).
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function sessionId() {
    try {
      let id = localStorage.getItem(SESSION_KEY);
      if (!id) {
        id = newId();
        localStorage.setItem(SESSION_KEY, id);
      }
      return id;
    } catch (e) {
      return null; // storage disabled: feedback is still accepted without a session id
    }
  }

  // The API's own message: a string `detail`, or FastAPI's list of validation errors.
  async function errorMessage(response) {
    let detail = null;
    try {
      detail = (await response.json()).detail;
    } catch (e) {
      detail = null;
    }
    if (Array.isArray(detail)) {
      return detail.map((d) => {
        const where = (d.loc || []).filter((p) => p !== "body").join(".");
        return where ? `${where}: ${d.msg}` : d.msg;
      }).join("; ");
    }
    if (typeof detail === "string" && detail) return detail;
    return `the server answered ${response.status} ${response.statusText}`.trim();
  }

  async function postJson(url, payload) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function safeHref(url) {
    if (!url) return null;
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  const fmt = (x, digits = 3) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : null);

  // Search

  function showSearchError(message) {
    searchError.textContent = message;
    searchError.hidden = !message;
  }

  function searchBody(query, useReranker, offset, rankingId) {
    const body = { query_text: query, use_reranker: useReranker, top_k: config.topK, offset, facets: config.facets };
    const chosen = Object.entries(filters).filter(([, values]) => values.size);
    if (chosen.length) body.filters = Object.fromEntries(chosen.map(([field, values]) => [field, [...values]]));
    if (languageSelect.value) body.language = languageSelect.value;
    if (rankingId) body.ranking_id = rankingId;
    const session = sessionId();  // one person's searches and what they do on them are one voice
    if (session) body.session_id = session;
    return body;
  }

  // `more`: the next page of the last search, appended; else a new search from the first page.
  async function search(more = false) {
    const query = more ? lastSearch.query : input.value.trim();
    showSearchError("");
    if (!query) {
      showSearchError("Type a few words to search.");
      input.focus();
      return;
    }
    const useReranker = more ? lastSearch.useReranker : toggle.checked;
    const payload = more
      ? searchBody(query, useReranker, lastSearch.shown, lastSearch.rankingId)
      : searchBody(query, useReranker, 0, null);
    resultsList.setAttribute("aria-busy", "true");
    moreButton.disabled = true;
    searchStatus.textContent = more ? "Loading more results…" : "Searching…";
    let response;
    try {
      response = await postJson(config.searchUrl, payload);
    } catch (e) {
      resultsList.setAttribute("aria-busy", "false");
      moreButton.disabled = false;
      searchStatus.textContent = "";
      showSearchError("Could not reach the search service. Check that it is running, then try again.");
      return;
    }
    resultsList.setAttribute("aria-busy", "false");
    moreButton.disabled = false;
    if (!response.ok) {
      searchStatus.textContent = "";
      showSearchError(`Search failed: ${await errorMessage(response)}`);
      return;
    }
    const body = await response.json();
    if (!more) {
      lastSearch = { query, useReranker, modelVersion: body.model_version, rankingId: body.ranking_id, shown: 0 };
      const params = new URLSearchParams({ q: query });
      if (!useReranker) params.set("reranker", "off");
      if (languageSelect.value) params.set("language", languageSelect.value);
      history.replaceState(null, "", `?${params}`);
      $("new-model").hidden = true;
      resultsList.replaceChildren();
    }
    lastSearch.shown += body.results.length;
    lastSearch.total = body.total;
    renderResults(body);
    renderFacets(body.facets || {});
  }

  function renderResults(body) {
    const how = body.use_reranker ? `ranked by ${body.model_version}` : "first stage only (BM25), reranker off";
    const narrowed = Object.values(filters).some((values) => values.size) ? " (filtered)" : "";
    searchStatus.textContent = lastSearch.shown
      ? `${lastSearch.shown} of ${body.total} results for “${body.query_text}”${narrowed}, ${how}, in ${Math.round(body.latency_ms)} ms.`
      : `No results for “${body.query_text}”${narrowed}.`;
    for (const result of body.results) {
      resultsList.append(renderResult(body, result));
    }
    moreButton.hidden = lastSearch.shown >= body.total || body.results.length === 0;
  }

  const capitalised = (text) => text.charAt(0).toUpperCase() + text.slice(1);

  // One group of checkboxes per field, each value with its count over the whole match.
  function renderFacets(facets) {
    const groups = [];
    config.facets.forEach((field, f) => {
      const counts = facets[field] || {};
      const ticked = filters[field] || new Set();
      const values = [...Object.keys(counts), ...[...ticked].filter((v) => !(v in counts))];
      if (!values.length) return;
      const group = el("fieldset", { class: "facet" }, el("legend", {}, capitalised(field)));
      values.forEach((value, v) => {
        const id = `facet-${f}-${v}`;
        const box = el("input", { type: "checkbox", id, checked: ticked.has(value) });
        box.addEventListener("change", () => {
          filters[field] = filters[field] || new Set();
          if (box.checked) filters[field].add(value);
          else filters[field].delete(value);
          search();
        });
        group.append(el("div", { class: "facet-value" }, box, el("label", { for: id }, `${value} (${counts[value] || 0})`)));
      });
      groups.push(group);
    });
    facetsBox.replaceChildren(...groups);
    facetsBox.hidden = groups.length === 0;
  }

  function renderResult(body, r) {
    const titleId = `result-${r.rank}-title`;
    const href = safeHref(r.url);
    const title = href ? el("a", { href, rel: "noopener noreferrer", class: "result-link" }, r.title) : r.title;
    if (href) {
      // An open is recorded without touching the link (it still opens, copies, middle-clicks as a link).
      const opened = () => recordOpen(body.inference_id, r.resource_id);
      title.addEventListener("click", opened);
      title.addEventListener("auxclick", (event) => { if (event.button === 1) opened(); });
    }
    const meta = [r.subject, r.level, r.type].filter(Boolean).join(" · ");
    const score = body.use_reranker
      ? el("span", { class: "score" }, "Reranker score ", el("strong", { class: "rerank-score" }, fmt(r.rerank_score)))
      : null;
    const like = el("button", { type: "button", class: "like", "aria-pressed": "false" }, "Like");
    const dislike = el("button", { type: "button", class: "dislike", "aria-pressed": "false" }, "Dislike");
    const status = el("span", { class: "feedback-status", role: "status", "aria-live": "polite" });
    const ui = { like, dislike, status };
    like.addEventListener("click", () => sendFeedback(body.inference_id, r, "like", ui));
    dislike.addEventListener("click", () => sendFeedback(body.inference_id, r, "dislike", ui));
    return el("li", { class: "result", "data-resource-id": r.resource_id },
      el("article", { "aria-labelledby": titleId },
        el("h3", { id: titleId },
          el("span", { class: "rank", "aria-label": `Rank ${r.rank}` }, `#${r.rank}`), " ", title),
        meta ? el("p", { class: "meta" }, meta) : null,
        el("p", { class: "description" }, r.description),
        el("div", { class: "result-foot" },
          el("p", { class: "scores" }, score, score ? " · " : null,
            el("span", { class: "score" }, "BM25 ", el("strong", { class: "bm25-score" }, fmt(r.first_stage_score, 2)))),
          el("div", { class: "feedback", role: "group", "aria-label": `Feedback on ${r.title}` }, like, dislike, status))));
  }

  // Opens and returns: a beacon when a result is opened, and its dwell when the person is back.

  const OPENS_KEY = "eduranker.opens";

  function pendingOpens() {
    try {
      return JSON.parse(sessionStorage.getItem(OPENS_KEY) || "[]");
    } catch (e) {
      return [];
    }
  }

  function keepOpens(opens) {
    try {
      sessionStorage.setItem(OPENS_KEY, JSON.stringify(opens.slice(-20)));
    } catch (e) {
      // storage disabled: the open is still sent, only its dwell is not
    }
  }

  function beacon(payload) {
    const session = sessionId();
    if (session) payload.session_id = session;
    const body = JSON.stringify(payload);
    // sendBeacon survives the page being left for the result; fetch with keepalive where it is missing.
    if (navigator.sendBeacon && navigator.sendBeacon(config.interactionsUrl,
      new Blob([body], { type: "application/json" }))) return;
    fetch(config.interactionsUrl, { method: "POST", headers: { "Content-Type": "application/json" }, body, keepalive: true })
      .catch(() => {});
  }

  function recordOpen(inferenceId, resourceId) {
    beacon({ inference_id: inferenceId, resource_id: resourceId, request_id: newId() });
    keepOpens([...pendingOpens(), { inference_id: inferenceId, resource_id: resourceId, at: Date.now() }]);
  }

  // Back on the list (tab shown again, or the page restored by "back"): each open's dwell.
  function recordReturns() {
    if (document.visibilityState !== "visible") return;
    const opens = pendingOpens();
    if (!opens.length) return;
    keepOpens([]);
    const now = Date.now();
    for (const o of opens) {
      beacon({ inference_id: o.inference_id, resource_id: o.resource_id, request_id: newId(),
        dwell_s: Math.max(0, (now - o.at) / 1000) });
    }
  }

  document.addEventListener("visibilitychange", recordReturns);
  window.addEventListener("pageshow", recordReturns);

  // Feedback

  async function sendFeedback(inferenceId, result, label, ui) {
    ui.like.disabled = ui.dislike.disabled = true;
    ui.status.className = "feedback-status";
    ui.status.textContent = "Sending…";
    const payload = {
      inference_id: inferenceId, resource_id: result.resource_id, feedback: label, request_id: newId(),
    };
    const session = sessionId();
    if (session) payload.session_id = session;
    try {
      const response = await postJson(config.feedbackUrl, payload);
      if (response.ok) {
        const saved = await response.json();
        ui.like.setAttribute("aria-pressed", String(saved.label === "like"));
        ui.dislike.setAttribute("aria-pressed", String(saved.label === "dislike"));
        ui.status.classList.add("ok");
        ui.status.textContent = saved.status === "updated"
          ? `Changed to ${saved.label}. Thanks!`
          : saved.status === "duplicate" ? "Already recorded." : `${saved.label === "like" ? "Liked" : "Disliked"}. Thanks!`;
        schedulePoll(1000);
      } else {
        ui.status.classList.add("error");
        ui.status.textContent = `Not saved: ${await errorMessage(response)}`;
      }
    } catch (e) {
      ui.status.classList.add("error");
      ui.status.textContent = "Not saved: could not reach the server. Try again in a moment.";
    } finally {
      ui.like.disabled = ui.dislike.disabled = false;
    }
  }

  // Panel

  function setText(id, value) {
    $(id).textContent = value === null || value === undefined ? "–" : String(value);
  }

  function showPartError(id, message) {
    $(id).textContent = message || "";
    $(id).hidden = !message;
  }

  function renderModel(model) {
    if (!model) return;
    setText("model-version", model.version);
    setText("model-kind", model.kind);
    setText("model-trained", when(model.trained_at) || "never: version 0 learned from no feedback yet");
    setText("model-loaded", when(model.loaded_at));
    const table = $("model-metrics");
    const rows = METRICS.filter((k) => typeof (model.metrics || {})[k] === "number").map((k) => [k, model.metrics[k]]);
    table.tBodies[0].replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, fmt(v)))));
    table.hidden = rows.length === 0;
    renderClickModel(model.click_model);

    if (servedVersion !== null && servedVersion !== model.version) {
      const text = `A new model is served: ${model.version} (was ${servedVersion}).`;
      announce(text);
      if (lastSearch && lastSearch.useReranker && lastSearch.modelVersion !== model.version) {
        $("new-model-text").textContent = `${text} The results below were ranked by ${lastSearch.modelVersion}.`;
        $("new-model").hidden = false;
      }
    }
    servedVersion = model.version;
  }

  function renderClickModel(clicks) {
    if (!clicks) return;
    const rows = clicks.propensity.map((p, i) => el("tr", {},
      el("th", { scope: "row" }, String(i + 1)), el("td", {}, fmt(p, 2)),
      el("td", {}, clicks.source[i] === "estimated" ? `${fmt(clicks.low[i], 2)} to ${fmt(clicks.high[i], 2)}` : "—")));
    $("click-model").tBodies[0].replaceChildren(...rows);
    const estimated = clicks.source.filter((s) => s === "estimated").length;
    setText("click-model-source", estimated > 1
      ? `Estimated from ${clicks.searches} searches and ${clicks.opens} opens by the run that trained this version.`
      : "Not estimated from traffic yet: 1/rank, as studies of search pages report.");
  }

  function renderSummary() {
    const version = $("model-version").textContent;
    const count = $("progress-new").textContent;
    const threshold = $("progress-threshold").textContent;
    $("model-summary-link").textContent = `Model ${version} · ${count} of ${threshold} feedback toward the next training`;
  }

  function renderProgress(p) {
    if (!p) return;
    setText("progress-new", p.new_feedback);
    setText("progress-threshold", p.threshold);
    const bar = $("progress-bar");
    bar.max = Math.max(1, p.threshold || 1);
    bar.value = Math.min(p.new_feedback, bar.max);
    bar.setAttribute("aria-valuetext", `${p.new_feedback} of ${p.threshold} new feedback`);
    setText("progress-like", p.like);
    setText("progress-dislike", p.dislike);
    setText("progress-total", p.total);
    setText("progress-min-total", p.min_total);
    $("balance-like").style.width = `${Math.round((p.like_ratio ?? 0.5) * 100)}%`;
    let state;
    if (p.training_requested) state = "Training requested: the trainer is working on a new version.";
    else if (p.blocked_by) state = `Not yet: ${p.blocked_by}.`;
    else if (p.new_feedback >= p.threshold) state = "Threshold reached: training starts when both labels are present and balanced enough.";
    else state = `${p.threshold - p.new_feedback} more feedback until the next training.`;
    setText("progress-state", state);
  }

  function renderExperiment(e, last) {
    $("experiment").hidden = !e;
    $("experiment-none").hidden = Boolean(e);
    if (e) {
      const what = e.kind === "watch"
        ? `Watching ${e.champion} after its promotion: ${e.challenger} (the previous champion) ranks half of ${pct(e.share)} of searches.`
        : `Users compare the challenger ${e.challenger} with the champion ${e.champion} on ${pct(e.share)} of searches.`;
      setText("experiment-what", what);
      setText("experiment-impressions", e.impressions);
      setText("experiment-challenger", e.wins.challenger);
      setText("experiment-champion", e.wins.champion);
      setText("experiment-ties", e.wins.tie);
      setText("experiment-p", fmt(e.evidence.p_value));
      setText("experiment-state", e.decided ? `Decided: ${e.decided.decision} — ${e.decided.reason}` : e.verdict.reason);
    }
    const text = last ? `Last decision: ${last.decision} (${last.challenger} against ${last.champion}) — ${last.reason}` : "";
    $("experiment-last").textContent = text;
    $("experiment-last").hidden = !last;
    const key = last ? `${last.experiment_id}:${last.decision}` : null;
    if (lastDecision !== undefined && key && key !== lastDecision) announce(text);
    lastDecision = key;
  }

  function pct(share) {
    return `${Math.round((share || 0) * 100)} %`;
  }

  function runLine(run) {
    const m = run.metrics || {};
    const parts = [];
    if ("candidate_ndcg@10" in m) {
      const vs = ["champion", "bm25"].filter((w) => `${w}_ndcg@10` in m)
        .map((w) => `${w === "bm25" ? "BM25" : w} ${fmt(m[`${w}_ndcg@10`])}`);
      parts.push(`nDCG@10 ${fmt(m["candidate_ndcg@10"])}${vs.length ? ` (${vs.join(", ")})` : ""}`);
    }
    if (run.pairs) parts.push(`${run.pairs} pairs`);
    return parts.join(" · ");
  }

  function renderRuns(runs) {
    if (!runs) return;
    const list = $("runs");
    list.replaceChildren(...runs.map((run) => {
      const label = run.version || "no version";
      const report = run.report_url
        ? el("a", { href: run.report_url, class: "report-link" }, `Report for ${run.version}`)
        : null;
      // A promoted run's detail repeats its metrics; the others say why it did not promote.
      const detail = run.detail && run.status !== "promoted" ? el("p", { class: "run-detail" }, run.detail) : null;
      return el("li", { class: `run run-${run.status}`, "data-status": run.status },
        el("p", { class: "run-head" },
          el("strong", {}, label), " ", el("span", { class: `badge badge-${run.status}` }, run.status),
          " ", el("span", { class: "help" }, when(run.finished_at || run.started_at) || "")),
        runLine(run) ? el("p", { class: "run-metrics" }, runLine(run)) : null,
        detail, report);
    }));
    $("runs-empty").hidden = runs.length > 0;
    const finished = runs.filter((r) => r.status !== "running").map((r) => r.run_id);
    if (seenRuns !== null) {
      const fresh = runs.filter((r) => r.status !== "running" && !seenRuns.has(r.run_id));
      for (const run of fresh) announce(`Training run finished: ${run.status}${run.version ? ` (${run.version})` : ""}.`);
    }
    seenRuns = new Set(finished);
  }

  function announce(text) {
    announcer.textContent = text;
  }

  async function refreshStatus() {
    try {
      const response = await fetch(config.statusUrl, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(await errorMessage(response));
      const status = await response.json();
      const errors = status.errors || {};
      renderModel(status.model);
      renderProgress(status.progress);
      renderExperiment(status.experiment, status.last_experiment);
      renderRuns(status.runs);
      renderSummary();
      showPartError("model-error", errors.model);
      showPartError("progress-error", errors.progress && `Progress unavailable: ${errors.progress}`);
      showPartError("runs-error", errors.runs);
      setText("panel-updated", `Updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      setText("panel-updated", `Status unavailable (${e.message}); retrying…`);
    }
  }

  function schedulePoll(delayMs) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(async () => {
      if (!document.hidden) await refreshStatus();
      schedulePoll(config.pollMs);
    }, delayMs);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  toggle.addEventListener("change", () => {
    if (input.value.trim()) search();
  });
  languageSelect.addEventListener("change", () => {
    if (input.value.trim()) search();
  });
  moreButton.addEventListener("click", () => search(true));
  if (config.languages.length > 1) {
    for (const language of config.languages) languageSelect.append(el("option", { value: language }, language));
    $("language-choice").hidden = false;
  }
  $("search-again").addEventListener("click", () => {
    search().then(() => $("results-section").focus());
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) schedulePoll(0);
  });

  const params = new URLSearchParams(window.location.search);
  if (params.get("reranker") === "off") toggle.checked = false;
  if (params.get("language") && config.languages.includes(params.get("language"))) {
    languageSelect.value = params.get("language");
  }
  if (params.get("q")) {
    input.value = params.get("q");
    search();
  }
  schedulePoll(0);
})();
