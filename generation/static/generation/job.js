// Follows jobs over server-sent events (/jobs/<id>/stream). Every element with data-job on the page is one job
// (the job page has one; a conversation page has one per turn, and follows the unfinished one). While a job
// waits: its queue position and the time since it was sent. From the first token: the text, rendered as
// Markdown as it grows (job_markdown.js), the waiting notice hidden, and live counters (tokens so far, elapsed
// since it was sent, tokens/s). At the end the stored job (/jobs/<id>.json; output_html rendered and sanitized
// by the server, everything else set as text) replaces all of it, and the root dispatches "job:end".
//
// Timings come from the server's clocks: a stream entry's id is the Redis time in ms when the worker wrote it,
// and data-server-now gives this page's offset to the server, so a reloaded page (the stream replays from the
// start in one burst) still shows the real time to first token and tokens/s. Without EventSource: polls the JSON.
(function () {
  "use strict";
  var render = window.llmsiteMarkdown ? window.llmsiteMarkdown.render : function (el, text) { el.textContent = text; };
  var addCopyButtons = window.llmsiteMarkdown ? window.llmsiteMarkdown.addCopyButtons : function () {};

  function seconds(value) { return value === null || value === undefined ? "–" : value.toFixed(2) + " s"; }
  function rate(value) { return value === null || value === undefined ? "–" : value.toFixed(1); }
  function entryMs(id) { var ms = parseInt(String(id || "").split("-")[0], 10); return isNaN(ms) ? null : ms; }

  function Job(root) {
    this.root = root;
    this.output = this.part("output");
    this.createdMs = Date.parse(root.dataset.created);
    var serverNow = parseInt(root.dataset.serverNow, 10);
    this.skewMs = isNaN(serverNow) ? 0 : serverNow - Date.now();
    this.prefix = root.dataset.answerSoFar || ""; // a continuation shows the answer it continues first
    this.streamed = null; // text of the current attempt, null before its start
    this.tokens = 0;
    this.startMs = this.firstMs = this.lastMs = null;
    this.renderTimer = null;
    this.ticker = null;
  }

  Job.prototype.part = function (name) { return this.root.querySelector('[data-part="' + name + '"]'); };

  Job.prototype.text = function (name, value) {
    this.root.querySelectorAll('[data-stat="' + name + '"]').forEach(function (el) {
      el.textContent = value === null || value === undefined ? "–" : String(value);
    });
  };

  Job.prototype.show = function (name, visible) {
    var el = this.part(name);
    if (el) el.hidden = !visible;
  };

  Job.prototype.setStatus = function (value) {
    var status = this.part("status");
    if (!status) return;
    var label = value.charAt(0).toUpperCase() + value.slice(1);
    if (status.textContent !== label) status.textContent = label;
    status.className = "status status-" + value;
    this.root.dataset.status = value;
  };

  Job.prototype.setQueue = function (position) {
    this.show("queue", !!position);
    this.text("queue-position", position || "");
  };

  Job.prototype.nowMs = function () { return Date.now() + this.skewMs; };

  // The live counters: tokens so far, seconds since the job was sent, tokens/s after the first token.
  Job.prototype.tick = function () {
    var elapsed = isNaN(this.createdMs) ? null : Math.max(0, (this.nowMs() - this.createdMs) / 1000);
    var decoding = this.firstMs !== null && this.lastMs !== null ? (this.lastMs - this.firstMs) / 1000 : 0;
    var tps = this.tokens > 1 && decoding > 0 ? (this.tokens - 1) / decoding : null;
    this.text("live-tokens", this.tokens);
    this.text("live-elapsed", elapsed === null ? null : elapsed.toFixed(1) + " s");
    this.text("live-tps", tps === null ? "–" : tps.toFixed(1));
    this.text("completion-tokens", this.tokens);
    this.text("elapsed", elapsed === null ? null : elapsed.toFixed(1) + " s");
    this.text("tps", rate(tps));
  };

  Job.prototype.startTicker = function () {
    var self = this;
    if (this.ticker === null) this.ticker = setInterval(function () { self.tick(); }, 250);
    this.tick();
  };

  Job.prototype.stopTicker = function () {
    if (this.ticker !== null) clearInterval(this.ticker);
    this.ticker = null;
  };

  Job.prototype.draw = function () {
    var self = this;
    if (this.renderTimer !== null) return; // at most one rendering per 60 ms, however fast tokens come
    this.renderTimer = setTimeout(function () {
      self.renderTimer = null;
      if (self.root.dataset.finished === "true") return;
      var text = self.prefix + (self.streamed || "");
      self.root.dataset.raw = text;
      render(self.output, text);
    }, 60);
  };

  Job.prototype.onStart = function (event) {
    if (this.root.dataset.finished === "true") return; // a replay of a finished job: wait for its end
    this.setStatus("running");
    this.setQueue(null);
    this.startMs = entryMs(event.lastEventId);
    if (this.startMs !== null && !isNaN(this.createdMs)) {
      this.text("queue-wait", seconds(Math.max(0, (this.startMs - this.createdMs) / 1000)));
    }
    this.streamed = "";
    this.tokens = 0;
    this.firstMs = this.lastMs = null;
    this.show("waiting", true); // a new attempt: nothing of it has arrived yet
    this.draw();
  };

  Job.prototype.onToken = function (event) {
    if (this.root.dataset.finished === "true") return; // already showing the stored result
    if (this.streamed === null) { this.setStatus("running"); this.streamed = ""; }
    this.setQueue(null);
    var ms = entryMs(event.lastEventId);
    this.tokens += 1;
    if (this.firstMs === null) {
      this.firstMs = ms;
      this.show("waiting", false); // the first token takes the place of "Waiting for the model…"
      this.show("copy-all", true);
      if (ms !== null && !isNaN(this.createdMs)) this.text("ttft-user", seconds(Math.max(0, (ms - this.createdMs) / 1000)));
      if (ms !== null && this.startMs !== null) this.text("ttft", seconds(Math.max(0, (ms - this.startMs) / 1000)));
    }
    this.lastMs = ms;
    this.streamed += JSON.parse(event.data).text;
    this.draw();
  };

  // The stored job replaces what was streamed.
  Job.prototype.update = function (job) {
    var finished = job.is_finished;
    this.setStatus(job.status);
    var raw = (this.root.dataset.output === "own" ? "" : job.answer_so_far || "") + job.output;
    var unchanged = this.root.dataset.finished === "true" && this.root.dataset.raw === raw && this.streamed === null;
    if (!unchanged) { // (a page drawn finished keeps its output, and the focus on its buttons)
      this.output.innerHTML = this.root.dataset.output === "own" ? job.output_only_html : job.output_html;
      addCopyButtons(this.output);
    }
    this.output.setAttribute("aria-busy", finished ? "false" : "true");
    this.root.dataset.raw = raw;
    this.root.dataset.finished = finished ? "true" : "false";
    var error = this.part("error");
    if (error) { error.textContent = job.error; error.hidden = !job.error || job.status === "cancelled"; }
    this.show("waiting", !finished && !job.first_token_at);
    this.show("live", !finished);
    this.show("cancel", job.status === "queued" || job.status === "running");
    this.show("continue", !!job.can_continue);
    this.show("rating", finished);
    this.show("copy-all", !!job.output);
    var finish = this.part("finish");
    if (finish) {
      var text = job.finish_text ? job.finish_text.charAt(0).toUpperCase() + job.finish_text.slice(1) + "." : "";
      this.text("finish-text", text);
      finish.hidden = !text;
      finish.dataset.reason = job.finish_reason || (job.status === "cancelled" ? "cancelled" : "");
    }
    this.setQueue(job.queue_position);
    this.text("prompt-tokens", job.prompt_tokens);
    this.text("completion-tokens", job.completion_tokens);
    this.text("queue-wait", seconds(job.queue_wait_s));
    this.text("ttft", seconds(job.ttft_s));
    this.text("ttft-user", seconds(job.ttft_from_submission_s));
    this.text("elapsed", seconds(job.elapsed_s));
    this.text("tps", rate(job.tokens_per_s));
    this.text("batch", job.batch_size);
    this.text("attempts", job.attempts);
    if (finished) {
      this.stopTicker();
      this.root.dispatchEvent(new CustomEvent("job:end", { bubbles: true, detail: job }));
    }
  };

  Job.prototype.poll = function () {
    var self = this;
    fetch(this.root.dataset.jsonUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (job) {
        self.update(job);
        if (!job.is_finished) setTimeout(function () { self.poll(); }, 1000);
      })
      .catch(function () { setTimeout(function () { self.poll(); }, 2000); });
  };

  Job.prototype.follow = function () {
    var self = this;
    var source = new EventSource(this.root.dataset.streamUrl);
    if (this.root.dataset.finished !== "true") {
      this.show("live", true);
      this.output.setAttribute("aria-busy", "true");
      this.startTicker();
    }
    source.addEventListener("queued", function (event) { self.setQueue(JSON.parse(event.data).position); });
    source.addEventListener("start", function (event) { self.onStart(event); });
    source.addEventListener("token", function (event) { self.onToken(event); });
    source.addEventListener("end", function (event) {
      source.close();
      self.update(JSON.parse(event.data));
    });
  };

  // A finished job is followed too when the page asks (data-follow): a job stopped a moment ago gets its last
  // words saved by the worker after the page was drawn, and its stream's end brings them.
  document.querySelectorAll("[data-job]").forEach(function (root) {
    var job = new Job(root);
    addCopyButtons(job.output);
    if (root.dataset.finished === "true" && root.dataset.follow !== "true") return;
    if (window.EventSource && root.dataset.streamUrl) job.follow();
    else if (root.dataset.finished !== "true") setTimeout(function () { job.poll(); }, 1000);
  });
})();
