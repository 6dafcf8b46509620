// Conversation pages. New conversation: choosing a preset puts its system prompt in the box (then edit it
// freely). A conversation: the box for the next message opens when the newest answer ends (job.js dispatches
// "job:end"), and Ctrl+Enter (Cmd+Enter) sends it.
(function () {
  "use strict";
  var presetsNode = document.getElementById("system-presets");
  var preset = document.getElementById("id_preset");
  var system = document.getElementById("id_system_prompt");
  if (presetsNode && preset && system) {
    var presets = JSON.parse(presetsNode.textContent);
    preset.addEventListener("change", function () {
      if (Object.prototype.hasOwnProperty.call(presets, preset.value)) system.value = presets[preset.value];
    });
  }

  var fields = document.getElementById("composer-fields");
  var busy = document.getElementById("composer-busy");
  document.addEventListener("job:end", function (event) {
    var turns = document.querySelectorAll(".thread [data-job]");
    if (!fields || !turns.length || event.target !== turns[turns.length - 1]) return;
    fields.disabled = false;
    if (busy) busy.hidden = true;
  });

  document.querySelectorAll("#composer textarea, #conversation-form textarea").forEach(function (area) {
    area.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && area.form) {
        event.preventDefault();
        if (area.form.requestSubmit) area.form.requestSubmit(); else area.form.submit();
      }
    });
  });

  // Open on the newest turn (or the one the address names) rather than the top of a long thread.
  var thread = document.querySelector(".thread");
  if (thread && !location.hash) {
    var last = thread.lastElementChild;
    if (last && thread.children.length > 2) last.scrollIntoView({ block: "start" });
  }
})();
