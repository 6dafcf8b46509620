// Shows only the fields of the chosen task (context for QA, language for code, length for summaries).
(function () {
  "use strict";
  var task = document.getElementById("id_task");
  if (!task) return;
  function sync() {
    document.querySelectorAll("[data-task]").forEach(function (el) {
      el.hidden = el.dataset.task !== task.value;
    });
  }
  task.addEventListener("change", sync);
  sync();
})();
