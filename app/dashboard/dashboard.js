// The datajobs dashboard: the caller's jobs, one job's detail, the workers. Plain JavaScript, no build step.
//
// What it asks the gateway (its own origin, nothing else):
// - every REFRESH_MS, GET /jobs (the status filter as ?status=) and then GET /workers;
// - for each job shown that has not ended (at most MAX_WAITS at once), GET /jobs/<id>?wait= with
//   If-None-Match of the last ETag, so a change shows the moment it happens, not at the next refresh;
// - on a click, GET /jobs/<id> (detail), DELETE /jobs/<id> (Cancel), GET /jobs/<id>/result (a download).
// With API_TOKENS set, a 401 from any of them puts the token prompt up and everything else away.
//
// Everything from the API reaches the page through textContent, attributes or properties, never as
// markup (the page's Content-Security-Policy refuses inline scripts besides).
"use strict";

(() => {
  const STATUSES = ["started", "processing", "completed", "failed", "cancelled"];
  const ENDED = new Set(["completed", "failed", "cancelled"]);
  const CANCELLABLE = new Set(["started", "processing"]);
  const REFRESH_MS = 2000;
  const WAIT_SECONDS = 20;
  // A browser opens about 6 connections to one host over HTTP/1.1, and a held wait keeps one:
  // 4 waits, one for the list and workers (asked one after the other) and one for a click.
  const MAX_WAITS = 4;
  const LIST_LIMIT = 100; // rows in the table
  const LIST_PAGES = 3; // GET /jobs pages one refresh reads at most
  const TOKEN_KEY = "datajobs.token";

  const $ = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat();

  const state = {
    jobs: new Map(), // job id -> its latest body
    order: [], // the ids the last list gave, newest first
    rows: new Map(), // job id -> its <tr>
    changedAt: new Map(), // job id -> when a wait or a click last brought its body (performance.now())
    etags: new Map(), // job id -> ETag of the body we have
    waits: new Map(), // job id -> AbortController of the wait following it
    selected: null,
    running: false,
    generation: 0, // bumped by a filter change or a stop: answers to older list requests are dropped
    session: 0, // bumped by a stop (the token prompt): answers to older waits are dropped
    timer: null,
    waitsOff: false,
  };

  class Unauthorized extends Error {}

  // --- talking to the gateway ----------------------------------------------------------------

  /** fetch() with the token (if any); a 401 brings the token prompt back and throws Unauthorized. */
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("Accept", "application/json");
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set("Authorization", `Bearer ${token}`);
    // no-store: the HTTP cache must neither answer a wait nor turn our If-None-Match into its own.
    const response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "same-origin" });
    if (response.status === 401) {
      // An answer to a request sent with a token since replaced says nothing about the new one.
      if (sessionStorage.getItem(TOKEN_KEY) === token) {
        askForToken(token ? "The gateway refused that token: enter another." : "This gateway needs a token.");
      }
      throw new Unauthorized("unauthorized");
    }
    return response;
  }

  /** The sentence to show for a refused request: the API's error message and code. */
  async function problem(response) {
    try {
      const body = await response.json();
      if (body && body.error && typeof body.error.message === "string") {
        return `${body.error.message} (${body.error.code})`;
      }
    } catch (ignored) {
      // not JSON: a proxy's page, say
    }
    return `The gateway answered ${response.status} ${response.statusText}.`;
  }

  const jobPath = (id) => `/jobs/${encodeURIComponent(id)}`;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // --- the loop ------------------------------------------------------------------------------

  function start() {
    stop();
    $("token-form").hidden = true;
    $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
    state.running = true;
    tick(state.generation);
  }

  function stop() {
    state.running = false;
    state.generation += 1;
    state.session += 1;
    clearTimeout(state.timer);
    for (const controller of state.waits.values()) controller.abort();
    state.waits.clear();
  }

  async function tick(generation) {
    const started = performance.now();
    try {
      await refreshJobs(generation);
      await refreshWorkers(generation);
    } catch (error) {
      if (error instanceof Unauthorized) return; // the prompt is up; start() begins again
      if (generation === state.generation) {
        // fetch() rejects (a TypeError) when the gateway does not answer at all.
        showBanner(error instanceof TypeError ? `The gateway did not answer (${error.message}).` : error.message);
      }
    }
    if (state.running && generation === state.generation) {
      // Every REFRESH_MS from the start of this one, however long its requests took (at once if longer).
      state.timer = setTimeout(() => tick(generation), Math.max(0, REFRESH_MS - (performance.now() - started)));
    }
  }

  function restart() {
    // A new filter: drop the answers on their way, ask again now.
    clearTimeout(state.timer);
    state.generation += 1;
    if (state.running) tick(state.generation);
  }

  async function refreshJobs(generation) {
    const sent = performance.now();
    const listed = [];
    let cursor = null;
    // A page filtered by status may come back short with a `next`: go on a few pages for a full table.
    for (let page = 0; page < LIST_PAGES && listed.length < LIST_LIMIT; page += 1) {
      const query = new URLSearchParams({ limit: String(LIST_LIMIT - listed.length) });
      for (const status of chosenStatuses()) query.append("status", status);
      if (cursor) query.set("cursor", cursor);
      const response = await api(`/jobs?${query}`);
      if (generation !== state.generation) return;
      $("main").hidden = false;
      if (!response.ok) throw new Error(await problem(response));
      const body = await response.json();
      listed.push(...body.jobs);
      cursor = body.next;
      if (!cursor) break;
    }
    if (generation !== state.generation) return;
    showBanner(null);
    const jobs = new Map();
    for (const job of listed) {
      // A wait may have brought a newer body while this list was on its way: keep that one.
      const newer = (state.changedAt.get(job.job_id) || 0) > sent;
      jobs.set(job.job_id, newer ? state.jobs.get(job.job_id) : job);
    }
    if (state.selected && !jobs.has(state.selected) && state.jobs.has(state.selected)) {
      jobs.set(state.selected, state.jobs.get(state.selected));
    }
    state.jobs = jobs;
    state.order = listed.map((job) => job.job_id);
    for (const id of state.changedAt.keys()) if (!jobs.has(id)) state.changedAt.delete(id);
    for (const id of state.etags.keys()) if (!jobs.has(id)) state.etags.delete(id);
    renderJobs(Boolean(cursor));
    if (state.selected && jobs.has(state.selected)) renderDetail(jobs.get(state.selected));
    $("updated").textContent = `updated ${clock(new Date())}`;
    followJobs();
  }

  async function refreshWorkers(generation) {
    const response = await api("/workers");
    if (generation !== state.generation) return;
    const note = $("workers-note");
    if (!response.ok) {
      note.textContent = await problem(response);
      note.hidden = false;
      return;
    }
    const body = await response.json();
    if (generation !== state.generation) return;
    renderWorkers(body);
  }

  function chosenStatuses() {
    return [...document.querySelectorAll("#status-filter input:checked")].map((box) => box.value);
  }

  // --- following jobs that have not ended -------------------------------------------------------

  /** Keep a wait on the first MAX_WAITS unended jobs: the one in the detail, then the table's, newest first. */
  function followJobs() {
    if (!state.running || state.waitsOff) return;
    const wanted = [];
    const want = (id) => {
      const job = state.jobs.get(id);
      if (job && !ENDED.has(job.status) && !wanted.includes(id)) wanted.push(id);
    };
    if (state.selected) want(state.selected);
    state.order.forEach(want);
    const keep = new Set(wanted.slice(0, MAX_WAITS));
    for (const [id, controller] of state.waits) {
      if (!keep.has(id)) {
        controller.abort();
        state.waits.delete(id);
      }
    }
    for (const id of keep) if (!state.waits.has(id)) follow(id);
  }

  /** Follow one job, one request per change, until it ends, leaves the page or its wait is taken back. */
  async function follow(id) {
    const controller = new AbortController();
    const session = state.session;
    state.waits.set(id, controller);
    try {
      while (!controller.signal.aborted) {
        const etag = state.etags.get(id);
        // Without an ETag yet, one plain read gets it; from then on each request waits for a change.
        const url = etag ? `${jobPath(id)}?wait=${WAIT_SECONDS}` : jobPath(id);
        const asked = performance.now();
        const response = await api(url, { headers: etag ? { "If-None-Match": etag } : {}, signal: controller.signal });
        if (response.status === 304) {
          if (performance.now() - asked < 500) await sleep(1000); // a gateway that does not wait: do not spin
          continue;
        }
        if (response.status === 400 && etag) {
          state.waitsOff = true; // its MAX_WAIT_SECONDS is below ours: the list refresh alone will do
          break;
        }
        if (!response.ok) {
          await sleep(REFRESH_MS); // gone (404) or failing (503): not again at once; the list says what there is
          break;
        }
        const job = await response.json();
        if (controller.signal.aborted || session !== state.session) break;
        const tag = response.headers.get("ETag");
        if (!tag) break;
        state.etags.set(id, tag);
        update(job);
        if (ENDED.has(job.status)) break;
      }
    } catch (error) {
      // Taken back (AbortError), the prompt is up, or the network failed: the next list refresh starts it again.
      if (!(error instanceof Unauthorized) && error.name !== "AbortError") await sleep(REFRESH_MS);
    } finally {
      if (state.waits.get(id) === controller) {
        state.waits.delete(id);
        if (!controller.signal.aborted) followJobs();
      }
    }
  }

  /** A body from a wait or a click: show it now. */
  function update(job) {
    state.changedAt.set(job.job_id, performance.now());
    state.jobs.set(job.job_id, job);
    const row = state.rows.get(job.job_id);
    if (row) fillRow(row, job);
    if (state.selected === job.job_id) renderDetail(job);
  }

  // --- the jobs table ------------------------------------------------------------------------

  function renderJobs(next) {
    const tbody = $("jobs").tBodies[0];
    const listed = new Set(state.order);
    for (const [id, row] of state.rows) {
      if (!listed.has(id)) {
        row.remove();
        state.rows.delete(id);
      }
    }
    state.order.forEach((id, position) => {
      let row = state.rows.get(id);
      if (!row) {
        row = newRow(id);
        state.rows.set(id, row);
      }
      fillRow(row, state.jobs.get(id));
      // Move a row only when it is out of place: a moved row would lose the keyboard's focus.
      const here = tbody.rows[position] || null;
      if (here !== row) tbody.insertBefore(row, here);
    });
    const empty = $("jobs-empty");
    empty.hidden = state.order.length > 0;
    empty.textContent = chosenStatuses().length ? "No job with these statuses." : "No job yet.";
    const more = $("jobs-more");
    more.hidden = !next;
    more.textContent = `Showing the newest ${LIST_LIMIT} jobs.`;
  }

  function newRow(id) {
    const row = document.createElement("tr");
    row.dataset.jobId = id;
    row.tabIndex = 0;
    const cells = {};
    for (const name of ["id", "status", "progress", "rows-in", "rows-out", "duration", "created"]) {
      const cell = row.insertCell();
      cell.className = `col-${name}`;
      cells[name] = cell;
    }
    const code = document.createElement("code");
    code.textContent = id.slice(0, 8);
    code.title = id;
    cells.id.appendChild(code);
    cells.status.appendChild(document.createElement("span")).className = "badge";
    for (const kind of ["ops", "chunks"]) {
      const bar = document.createElement("progress");
      bar.className = `bar-${kind}`;
      cells.progress.appendChild(bar);
    }
    cells.progress.appendChild(document.createElement("span")).className = "progress-label";
    for (const name of ["rows-in", "rows-out", "duration"]) cells[name].classList.add("num");
    row.addEventListener("click", () => select(id));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(id);
      }
    });
    return row;
  }

  function fillRow(row, job) {
    row.dataset.status = job.status;
    row.classList.toggle("selected", state.selected === job.job_id);
    setBadge(row.querySelector(".badge"), job.status);
    const progress = progressOf(job);
    const [ops, chunks] = row.querySelectorAll("progress");
    ops.max = progress.opsMax;
    ops.value = progress.opsValue;
    ops.title = progress.opsText;
    chunks.hidden = !progress.chunksShown;
    chunks.max = progress.chunksMax;
    chunks.value = progress.chunksValue;
    chunks.title = progress.chunksText;
    row.querySelector(".progress-label").textContent = progress.label;
    row.querySelector(".col-rows-in").textContent = count(job.data ? job.data.processed_items : job.rows_in);
    row.querySelector(".col-rows-out").textContent = count(job.data && job.data.output_items);
    row.querySelector(".col-duration").textContent = duration(job);
    const created = row.querySelector(".col-created");
    created.textContent = timestamp(job.created_at);
    created.title = job.created_at || "";
  }

  function progressOf(job) {
    const p = job.progress || {};
    const total = p.operations_total || 0;
    const done = job.status === "completed" ? total : p.operations_done || 0;
    const opsText = `${done} of ${total} operations done`;
    const chunksShown = (p.chunks_total || 0) > 1;
    const chunksText = chunksShown ? `${p.chunks_done} of ${p.chunks_total} chunks done` : "";
    const parts = [`${done}/${total} ops`];
    if (chunksShown) parts.push(`${p.chunks_done}/${p.chunks_total} chunks`);
    if (job.status === "processing" && p.phase && p.phase !== "running") parts.push(p.phase);
    else if (job.status === "processing" && p.current_operation) parts.push(p.current_operation);
    return {
      // A job of no operations is all done once completed, and has nothing done before.
      opsMax: total || 1,
      opsValue: total ? done : Number(job.status === "completed"),
      opsText,
      chunksShown,
      chunksMax: p.chunks_total || 1,
      chunksValue: p.chunks_done || 0,
      chunksText,
      label: parts.join(" · "),
    };
  }

  function setBadge(element, status) {
    element.textContent = status;
    element.className = `badge status-${STATUSES.includes(status) ? status : "unknown"}`;
  }

  // --- one job's detail ------------------------------------------------------------------------

  async function select(id) {
    state.selected = id;
    for (const [rowId, row] of state.rows) row.classList.toggle("selected", rowId === id);
    $("detail-note").textContent = "";
    const known = state.jobs.get(id);
    if (known) renderDetail(known);
    try {
      const response = await api(jobPath(id));
      if (state.selected !== id) return;
      if (!response.ok) {
        $("detail-note").textContent = await problem(response);
        return;
      }
      state.etags.set(id, response.headers.get("ETag"));
      update(await response.json());
      followJobs();
    } catch (error) {
      if (!(error instanceof Unauthorized)) $("detail-note").textContent = error.message;
    }
  }

  function closeDetail() {
    state.selected = null;
    $("detail").hidden = true;
    for (const row of state.rows.values()) row.classList.remove("selected");
    followJobs();
  }

  function renderDetail(job) {
    $("detail").hidden = false;
    $("detail-id").textContent = job.job_id;
    setBadge($("detail-status"), job.status);
    $("detail-message").textContent = job.message || "";
    const data = job.data || null;

    const facts = [
      ["Created", timestamp(job.created_at)],
      ["Started", timestamp(job.started_at)],
      ["Finished", timestamp(job.finished_at)],
      ["Duration", duration(job)],
      ["Attempts", String(job.attempts ?? 0)],
      ["Progress", progressOf(job).label],
    ];
    if (Array.isArray(job.operations) && job.operations.length) facts.push(["Operations", job.operations.join(" → ")]);
    if (!data) facts.push(["Rows in", count(job.rows_in)]);
    if (data) {
      facts.push(["Rows in", count(data.processed_items)], ["Rows out", count(data.output_items)]);
      if (Array.isArray(data.workers) && data.workers.length) facts.push(["Workers", data.workers.join(", ")]);
      if (Array.isArray(data.columns)) {
        facts.push(["Columns", data.columns.map((column) => `${column.name} (${column.type})`).join(", ")]);
      }
    }
    const list = $("detail-facts");
    list.replaceChildren();
    for (const [term, value] of facts) {
      list.appendChild(document.createElement("dt")).textContent = term;
      list.appendChild(document.createElement("dd")).textContent = value;
    }

    const error = job.error;
    $("detail-error").hidden = !error;
    if (error) {
      $("detail-error-type").textContent = error.type;
      $("detail-error-step").textContent =
        error.operation_index === null || error.operation_index === undefined ? "" : `at step ${error.operation_index}`;
      $("detail-error-message").textContent = error.message;
    }

    const steps = data && Array.isArray(data.operations) ? data.operations : null;
    $("detail-steps").hidden = !steps;
    $("detail-steps-later").hidden = Boolean(steps) || !CANCELLABLE.has(job.status); // shown while it runs
    if (steps) {
      const tbody = $("detail-steps").querySelector("tbody");
      tbody.replaceChildren();
      steps.forEach((step, index) => {
        const row = tbody.insertRow();
        for (const [value, numeric] of [
          [String(index), true],
          [step.name, false],
          [count(step.rows_in), true],
          [count(step.rows_out), true],
          [typeof step.seconds === "number" ? step.seconds.toFixed(3) : "–", true],
        ]) {
          const cell = row.insertCell();
          cell.textContent = value;
          if (numeric) cell.className = "num";
        }
      });
    }

    const result = data && typeof data.result_url === "string" ? data.result_url : null;
    $("detail-result").hidden = !result;
    if (result) {
      for (const link of $("detail-result").querySelectorAll("a")) {
        link.href = `${result}?format=${link.dataset.format}`;
        link.dataset.jobId = job.job_id;
      }
    }
    $("detail-cancel").hidden = !CANCELLABLE.has(job.status);
    $("detail-cancel").dataset.jobId = job.job_id;
  }

  async function cancelSelected() {
    const button = $("detail-cancel");
    const id = button.dataset.jobId;
    const note = $("detail-note");
    button.disabled = true;
    note.textContent = "Cancelling…";
    try {
      const response = await api(jobPath(id), { method: "DELETE" });
      if (response.ok) {
        state.etags.set(id, response.headers.get("ETag"));
        update(await response.json());
        note.textContent = "Cancelled.";
      } else {
        note.textContent = await problem(response); // 409 job_finished: it ended first
        select(id);
      }
    } catch (error) {
      if (!(error instanceof Unauthorized)) note.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }

  /** A result link: followed as it is when there is no token; else fetched with it and saved. */
  async function download(event) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return; // a plain link streams the result
    event.preventDefault();
    const link = event.currentTarget;
    const note = $("detail-note");
    note.textContent = "Downloading…";
    try {
      const response = await api(link.getAttribute("href"));
      if (!response.ok) {
        note.textContent = await problem(response);
        return;
      }
      const disposition = response.headers.get("Content-Disposition") || "";
      const named = /filename="([^"]+)"/.exec(disposition);
      const url = URL.createObjectURL(await response.blob());
      const save = document.createElement("a");
      save.href = url;
      save.download = named ? named[1] : `${link.dataset.jobId}.${link.dataset.format}`;
      document.body.appendChild(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      note.textContent = "";
    } catch (error) {
      if (!(error instanceof Unauthorized)) note.textContent = error.message;
    }
  }

  // --- the workers panel ------------------------------------------------------------------------

  function renderWorkers(body) {
    $("workers-note").hidden = true;
    $("queue-depth").textContent = count(body.queue_depth);
    $("jobs-running").textContent = count(body.jobs_running);
    const tbody = $("workers").tBodies[0];
    tbody.replaceChildren();
    const workers = Array.isArray(body.workers) ? body.workers : [];
    for (const worker of workers) {
      const row = tbody.insertRow();
      row.dataset.worker = worker.name;
      const name = row.insertCell();
      name.textContent = worker.name;
      name.className = "worker-name";
      const seen = row.insertCell();
      seen.textContent = worker.last_seen ? ago(worker.last_seen) : "not heard from";
      seen.title = worker.last_seen || "";
      const running = row.insertCell();
      running.textContent = count(worker.running);
      running.className = "num";
      const jobs = row.insertCell();
      for (const id of worker.jobs || []) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.dataset.jobId = id;
        button.textContent = id.slice(0, 8);
        button.title = id;
        button.addEventListener("click", () => select(id));
        jobs.appendChild(button);
      }
    }
    if (!workers.length) {
      $("workers-note").textContent = "No live worker: queued jobs wait until one starts.";
      $("workers-note").hidden = false;
    }
  }

  // --- the token prompt ------------------------------------------------------------------------

  function askForToken(message) {
    stop();
    sessionStorage.removeItem(TOKEN_KEY);
    // Nothing but the prompt: what was shown belongs to whoever had the token.
    state.jobs = new Map();
    state.order = [];
    state.rows.clear();
    state.etags.clear();
    state.changedAt.clear();
    state.selected = null;
    $("jobs").tBodies[0].replaceChildren();
    $("workers").tBodies[0].replaceChildren();
    $("detail").hidden = true;
    $("main").hidden = true;
    showBanner(null);
    $("updated").textContent = "";
    $("forget-token").hidden = true;
    $("token-message").textContent = message;
    $("token-form").hidden = false;
    $("token-input").focus();
  }

  function showBanner(message) {
    const banner = $("banner");
    banner.hidden = !message;
    banner.textContent = message || "";
  }

  // --- formatting ------------------------------------------------------------------------------

  function count(value) {
    return typeof value === "number" ? numbers.format(value) : "–";
  }

  const pad = (n) => String(n).padStart(2, "0");

  function clock(date) {
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  /** An ISO 8601 time as local "YYYY-MM-DD HH:MM:SS" ("–" when there is none). */
  function timestamp(iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${clock(date)}`;
  }

  /** How long a job has run: from its start to its end, or to now while it runs. */
  function duration(job) {
    if (!job.started_at) return "–";
    const end = job.finished_at ? new Date(job.finished_at) : ENDED.has(job.status) ? null : new Date();
    if (!end) return "–";
    return seconds((end - new Date(job.started_at)) / 1000);
  }

  function seconds(total) {
    if (!(total >= 0)) return "–";
    if (total < 60) return `${total.toFixed(1)} s`;
    const whole = Math.round(total);
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${pad(whole % 60)} s`;
    return `${Math.floor(whole / 3600)} h ${pad(Math.floor((whole % 3600) / 60))} min`;
  }

  function ago(iso) {
    const elapsed = (Date.now() - new Date(iso).getTime()) / 1000;
    return Number.isNaN(elapsed) ? String(iso) : `${seconds(Math.max(0, elapsed))} ago`;
  }

  // --- wiring ----------------------------------------------------------------------------------

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    start();
  });
  $("forget-token").addEventListener("click", () => askForToken("Token forgotten: enter one to go on."));
  $("status-filter").addEventListener("change", restart);
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-cancel").addEventListener("click", cancelSelected);
  for (const link of $("detail-result").querySelectorAll("a")) link.addEventListener("click", download);

  start();
})();
