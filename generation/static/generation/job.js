// Polls the job's JSON once a second until it is finished and updates the page in place.
// output_html is rendered (and escaped) by the server; everything else is set as text.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root) return;
  var url = root.dataset.jsonUrl;

  function text(id, value) {
    var el = document.getElementById(id);
    if (el) el.textContent = value === null || value === undefined ? "–" : String(value);
  }

  function update(job) {
    var status = document.getElementById("job-status");
    status.textContent = job.status.charAt(0).toUpperCase() + job.status.slice(1);
    status.className = "status status-" + job.status;
    document.getElementById("job-output").innerHTML = job.output_html;
    var error = document.getElementById("job-error");
    error.textContent = job.error;
    error.hidden = !job.error;
    document.getElementById("job-waiting").hidden = job.is_finished;
    document.getElementById("cancel-form").hidden = job.is_finished;
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

  if (root.dataset.finished !== "true") setTimeout(poll, 1000);
})();
