// Asks before a form with data-confirm="Question?" is submitted (e.g. deleting a job); cancelling keeps the page.
// A listener instead of an onsubmit= attribute: the Content-Security-Policy allows no inline script.
document.addEventListener("submit", function (event) {
  "use strict";
  var form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
