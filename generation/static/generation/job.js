// Follows the job over server-sent events (/jobs/<id>/stream): tokens are appended as text while it runs,
// the queue position is shown while it waits, and at the end the stored job replaces everything (output_html
// is rendered and escaped by the server; everything else is set as text). Without EventSource: polls the JSON.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root) return;
  var url = root.dataset.jsonUrl;
  var output = document.getElementById("job-output");

  function text(id, value) {
    var el = document.getElementById(id);
    if (el) el.textContent = value === null || value === undefined ? "–" : String(value);
  }

  function setStatus(value) {
    var status = document.getElementById("job-status");
    status.textContent = value.charAt(0).toUpperCase() + value.slice(1);
    status.className = "status status-" + value;
  }

  function setQueue(position) {
    document.getElementById("job-queue").hidden = !position;
    text("job-queue-position", position || "");
  }

  function update(job) {
    setStatus(job.status);
    output.innerHTML = job.output_html;
    output.classList.remove("streaming");
    var error = document.getElementById("job-error");
    error.textContent = job.error;
    error.hidden = !job.error;
    document.getElementById("job-waiting").hidden = job.is_finished;
    document.getElementById("cancel-form").hidden = job.is_finished;
    setQueue(job.queue_position);
    text("stat-prompt-tokens", job.prompt_tokens);
    text("stat-completion-tokens", job.completion_tokens);
    text("stat-ttft", job.ttft_s === null ? null : job.ttft_s.toFixed(2) + " s");
    text("stat-tps", job.tokens_per_s === null ? null : job.tokens_per_s.toFixed(1));
    text("stat-batch", job.batch_size);
    text("stat-attempts", job.attempts);
    root.dataset.finished = job.is_finished ? "true" : "false";
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (job) {
        update(job);
        if (!job.is_finished) setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 2000); });
  }

  function follow() {
    var source = new EventSource(root.dataset.streamUrl);
    var streamed = null; // text received since the last start, shown raw while the job runs
    function show(value) {
      streamed = value;
      output.classList.add("streaming");
      output.textContent = value;
    }
    source.addEventListener("queued", function (event) {
      setQueue(JSON.parse(event.data).position);
    });
    source.addEventListener("start", function () {
      setStatus("running");
      setQueue(null);
      if (root.dataset.finished !== "true") show("");
    });
    source.addEventListener("token", function (event) {
      if (root.dataset.finished === "true") return; // already showing the stored result
      setQueue(null);
      if (streamed === null) setStatus("running");
      show((streamed || "") + JSON.parse(event.data).text);
    });
    source.addEventListener("end", function (event) {
      source.close();
      update(JSON.parse(event.data));
    });
  }

  if (window.EventSource && root.dataset.streamUrl) follow();
  else if (root.dataset.finished !== "true") setTimeout(poll, 1000);
})();
