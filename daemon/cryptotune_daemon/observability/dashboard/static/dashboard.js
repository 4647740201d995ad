// cryptotune dashboard: read-only pages fed by the daemon's JSON and its Server-Sent Events.
// Everything is built with DOM calls and textContent (never innerHTML): job data cannot inject markup.
"use strict";

(function () {
  const LOG_LINES = 200;

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (typeof value !== "number") return String(value);
    return Math.abs(value) >= 1000 || Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(digits === undefined ? 4 : digits);
  }

  function duration(seconds) {
    if (!seconds || seconds <= 0) return "–";
    const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
  }

  function when(ts) {
    return ts ? new Date(ts * 1000).toLocaleString() : "–";
  }

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      location.reload(); // the server answers with its sign-in page
      throw new Error("not signed in");
    }
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  // -- the jobs list -------------------------------------------------------------------------------

  async function refreshJobs() {
    const body = document.querySelector("#jobs tbody");
    try {
      const { jobs } = await getJson("/api/jobs");
      body.replaceChildren();
      if (!jobs.length) body.append(rowOf([el("td", "no jobs yet: cryptotune train DATA CONFIG", "muted")]));
      for (const job of jobs) {
        const link = el("a", job.job_id);
        link.href = `/jobs/${encodeURIComponent(job.job_id)}`;
        const first = el("td");
        first.append(link);
        body.append(rowOf([
          first,
          el("td", job.pipeline_id),
          el("td", job.state, `state ${job.state}`),
          el("td", job.stage || "–"),
          el("td", job.total_steps ? `${job.step} / ${job.total_steps}` : job.step || "–"),
          el("td", fmt(job.loss)),
          el("td", when(job.created_at)),
        ]));
      }
    } catch (error) {
      console.warn(error);
    }
  }

  function rowOf(cells) {
    const row = el("tr");
    row.append(...cells);
    return row;
  }

  // -- one job's page -------------------------------------------------------------------------------

  class Chart {
    constructor(node, label, color) {
      this.node = node;
      this.label = label;
      this.color = color;
      this.steps = [];
      this.values = [];
      this.plot = null;
      this.pending = false;
    }

    add(step, value) {
      if (typeof step !== "number" || typeof value !== "number") return;
      const last = this.steps.length - 1;
      if (last >= 0 && this.steps[last] >= step) {
        // A resumed run repeats steps after its checkpoint: keep the newest value of each step.
        let i = this.steps.findIndex((s) => s >= step);
        this.steps.length = i;
        this.values.length = i;
      }
      this.steps.push(step);
      this.values.push(value);
      this.node.dataset.points = String(this.steps.length);
      this.node.dataset.lastStep = String(step);
      this.schedule();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.draw();
      });
    }

    draw() {
      if (typeof uPlot === "undefined") return;
      const data = [this.steps, this.values];
      const width = Math.max(280, this.node.clientWidth || 480);
      if (!this.plot) {
        this.plot = new uPlot(
          {
            width,
            height: 220,
            legend: { show: true },
            scales: { x: { time: false } },
            axes: [{ label: "step" }, {}],
            series: [{ label: "step" }, { label: this.label, stroke: this.color, width: 2, points: { show: this.steps.length < 60 } }],
          },
          data,
          this.node,
        );
      } else {
        this.plot.setData(data);
      }
    }
  }

  function jobPage() {
    const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
    const $ = (id) => document.getElementById(id);
    const loss = new Chart($("loss-chart"), "train loss", "#2563eb");
    const evalLoss = new Chart($("eval-chart"), "eval loss", "#dc2626");
    const stages = new Map();
    let lastSeq = 0;
    let source = null;
    let finished = false;

    $("job-id").textContent = jobId;
    document.title = `cryptotune ${jobId}`;

    function setState(state) {
      const node = $("job-state");
      node.textContent = state;
      node.className = `state ${state}`;
    }

    function setProgress(p) {
      if (!p) return;
      if (typeof p.step === "number") $("job-step").textContent = String(p.step);
      if (p.total_steps) $("job-total").textContent = String(p.total_steps);
      if (typeof p.loss === "number") $("job-loss").textContent = fmt(p.loss);
      if (typeof p.tokens_per_second === "number") $("job-tps").textContent = fmt(p.tokens_per_second, 1);
      if (typeof p.eta_seconds === "number") $("job-eta").textContent = duration(p.eta_seconds);
    }

    function renderStages() {
      const list = $("stages");
      list.replaceChildren();
      for (const [name, info] of stages) {
        const item = el("li", null, `stage ${info.state}`);
        item.append(el("span", name, "name"), el("span", info.state, "badge"));
        if (info.seconds) item.append(el("span", `${info.seconds.toFixed(1)} s`, "muted"));
        list.append(item);
      }
    }

    function setStage(name, state, seconds) {
      stages.set(name, { state, seconds: seconds || (stages.get(name) || {}).seconds || 0 });
      renderStages();
    }

    function renderPlan(plan) {
      const body = document.querySelector("#plan tbody");
      if (!plan || typeof plan !== "object") return;
      body.replaceChildren();
      for (const [key, value] of Object.entries(plan)) {
        const shown = typeof value === "object" ? JSON.stringify(value) : fmt(value);
        body.append(rowOf([el("th", key), el("td", shown)]));
      }
    }

    function renderGpus(gpus) {
      const body = document.querySelector("#gpus tbody");
      if (!Array.isArray(gpus) || !gpus.length) return;
      body.replaceChildren();
      for (const gpu of gpus) {
        const util = gpu.utilization_percent >= 0 ? `${gpu.utilization_percent} %` : "–";
        body.append(rowOf([el("td", gpu.index), el("td", util), el("td", `${fmt(gpu.memory_used_mb)} / ${fmt(gpu.memory_total_mb)} MB`)]));
      }
    }

    function renderReport(report) {
      const box = $("report");
      if (!report) return;
      box.replaceChildren();
      box.className = "";
      const table = el("table", null, "grid kv");
      const shown = ["final_loss", "eval_loss", "perplexity", "tokens_per_second", "peak_memory_mb", "thinking_format_rate", "crypto_term_recall"];
      const metrics = Object.assign({}, report, report.metrics || {});
      for (const key of shown) {
        if (metrics[key] !== undefined) table.append(rowOf([el("th", key), el("td", fmt(metrics[key]))]));
      }
      const byDifficulty = metrics.eval_loss_by_difficulty;
      if (byDifficulty && typeof byDifficulty === "object") {
        for (const [level, value] of Object.entries(byDifficulty)) table.append(rowOf([el("th", `eval_loss (difficulty ${level})`), el("td", fmt(value))]));
      }
      box.append(table);
    }

    function onEvent(event) {
      lastSeq = Math.max(lastSeq, event.seq);
      const d = event.data || {};
      switch (event.type) {
        case "state":
          if (d.state) setState(d.state);
          if (d.reason) { $("job-failure").textContent = d.reason; $("job-failure").hidden = false; }
          break;
        case "progress":
          setProgress(d);
          loss.add(d.step, d.loss);
          break;
        case "eval":
          evalLoss.add(d.step, d.eval_loss);
          break;
        case "stage_started": setStage(d.stage, "running"); break;
        case "stage_completed": setStage(d.stage, "done", d.seconds); break;
        case "stage_skipped": setStage(d.stage, "skipped"); break;
        case "plan": renderPlan(d.plan || d); break;
        case "gpu_sample": renderGpus(d.gpus); break;
        case "failed": $("job-failure").textContent = d.reason || "failed"; $("job-failure").hidden = false; break;
        case "result": refreshDetail(); break;
        default: break;
      }
    }

    function connect() {
      // Reconnects (daemon restarts) resume after the last event seen: EventSource sends Last-Event-ID;
      // a stream the browser gave up on is reopened with ?after=.
      source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events?after=${lastSeq}`);
      source.addEventListener("open", () => { $("live").textContent = "live"; });
      source.addEventListener("job", (message) => onEvent(JSON.parse(message.data)));
      source.addEventListener("end", () => {
        finished = true;
        source.close();
        $("live").textContent = "finished";
        refreshDetail();
      });
      source.addEventListener("error", () => {
        if (finished) return;
        $("live").textContent = "reconnecting…";
        if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
      });
    }

    async function refreshDetail() {
      try {
        const job = await getJson(`/api/jobs/${encodeURIComponent(jobId)}`);
        $("job-pipeline").textContent = job.pipeline_id;
        setState(job.state);
        if (job.progress && job.progress.step >= Number($("job-step").textContent)) setProgress(job.progress);
        for (const stage of job.stages) if (!stages.has(stage.name) || stage.state !== "pending") setStage(stage.name, stage.state, stage.seconds);
        renderPlan(job.plan);
        renderReport(job.report);
        // A queued job on Ray says what it waits for ("waiting for 2 nodes × 4 GPUs; …").
        $("job-waiting").textContent = job.waiting_for || "";
        $("job-waiting").hidden = !(job.state === "queued" && job.waiting_for);
        if (job.failure_reason) { $("job-failure").textContent = job.failure_reason; $("job-failure").hidden = false; }
        if (Array.isArray(job.log_tail) && job.log_tail.length) {
          // The worker's log (warnings included), refreshed with the rest of the page.
          const pre = $("log");
          const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.textContent = job.log_tail.slice(-LOG_LINES).join("\n");
          if (atBottom) pre.scrollTop = pre.scrollHeight;
        }
      } catch (error) {
        console.warn(error);
      }
    }

    refreshDetail().then(connect);
    setInterval(() => { if (!finished) refreshDetail(); }, 5000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "jobs") {
      refreshJobs();
      setInterval(refreshJobs, 3000);
    } else if (page === "job") {
      jobPage();
    }
  });
})();
