// Copy buttons: <button data-copy="ID"> copies the text of the element with that id, and a
// <span data-copied-for="ID" role="status"> says so. The Clipboard API needs a secure context (https or
// localhost); elsewhere the text is selected and copied with execCommand, or left selected for Ctrl+C.
(function () {
  "use strict";

  function say(id, text) {
    var status = document.querySelector('[data-copied-for="' + id + '"]');
    if (status) {
      status.textContent = text;
      window.setTimeout(function () { status.textContent = ""; }, 4000);
    }
  }

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function fallback(id, element) {
    selectText(element);
    var copied = false;
    try { copied = document.execCommand("copy"); } catch (error) { copied = false; }
    say(id, copied ? "Copied." : "Selected: press Ctrl+C (⌘C) to copy.");
  }

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("button[data-copy]") : null;
    if (!button) {
      return;
    }
    var id = button.dataset.copy;
    var element = document.getElementById(id);
    if (!element) {
      return;
    }
    var text = element.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { say(id, "Copied."); },
                                               function () { fallback(id, element); });
    } else {
      fallback(id, element);
    }
  });
}());
