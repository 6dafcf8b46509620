// The job page's confidence view: the Confidence button (aria-pressed) swaps the rendered answer for its tokens,
// each shaded by the probability the model gave it and focusable; hovering over a token or moving to it with the
// keyboard shows a popup with its probability and the alternatives the model weighed (Escape hides it).
//
// The tokens are the job's stored log-probabilities (Job.logprobs: [text, logprob, [[alternative, logprob], ...]]
// per token), taken from the "job:end" event job.js dispatches with the stored job, or fetched from the job's JSON
// when the button is pressed first. Model text only ever goes in through textContent.
(function () {
  "use strict";
  var root = document.getElementById("job");
  var button = document.getElementById("confidence-toggle");
  if (!root || !button) return;
  var panel = root.querySelector('[data-part="confidence"]');
  var tokens = root.querySelector('[data-part="confidence-tokens"]');
  var popup = document.getElementById("confidence-popup");
  var output = root.querySelector('[data-part="output"]');
  var entries = null; // the stored log-probabilities, once known
  var built = false;
  var current = null; // the token whose popup is shown

  // Shades: the lower bound of each band (tok-0 is the surest); the legend in the template says the same.
  var BANDS = [0.9, 0.7, 0.5, 0.3];

  function band(p) {
    for (var i = 0; i < BANDS.length; i++) if (p >= BANDS[i]) return i;
    return BANDS.length;
  }

  function percent(p) {
    var v = p * 100;
    if (v < 0.1) return "<0.1%";
    if (v >= 99.95) return ">99.9%";
    return (v < 10 || v >= 99 ? v.toFixed(1) : v.toFixed(0)) + "%";
  }

  // A token as the view shows it: line breaks and tabs get a visible mark (the break itself follows it).
  function shown(text) {
    return String(text).replace(/\t/g, "\u21e5\t").replace(/\r?\n/g, "\u21b5\n");
  }

  // A token as the popup names it: in quotes, whitespace spelled out, so " the" and "the" differ.
  function quoted(text) {
    return "\u201c" + String(text).replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/\r/g, "\\r") + "\u201d";
  }

  function setStat(value) {
    var text = value === null || value === undefined ? "–" : Math.round(value * 100) + "%";
    root.querySelectorAll('[data-stat="confidence"]').forEach(function (el) { el.textContent = text; });
    var row = root.querySelector('[data-part="confidence-row"]');
    if (row) row.hidden = value === null || value === undefined;
  }

  function build() {
    var fragment = document.createDocumentFragment();
    entries.forEach(function (entry, i) {
      var span = document.createElement("span");
      var p = Math.exp(entry[1]);
      span.className = "tok tok-" + band(p);
      span.tabIndex = 0;
      span.dataset.index = String(i);
      span.textContent = shown(entry[0]);
      fragment.appendChild(span);
    });
    tokens.replaceChildren(fragment);
    built = true;
  }

  function row(list, text, logprob, chosen) {
    var item = document.createElement("li");
    if (chosen) item.className = "chosen";
    var name = document.createElement("span");
    name.className = "alt-token";
    name.textContent = quoted(text);
    var value = document.createElement("span");
    value.className = "alt-p";
    value.textContent = percent(Math.exp(logprob)) + (chosen ? " (chosen)" : "");
    item.appendChild(name);
    item.appendChild(value);
    list.appendChild(item);
  }

  function show(span) {
    var entry = entries[parseInt(span.dataset.index, 10)];
    if (!entry) return;
    if (current && current !== span) current.removeAttribute("aria-describedby");
    current = span;
    var head = document.createElement("p");
    head.className = "popup-head";
    var name = document.createElement("strong");
    name.textContent = quoted(entry[0]);
    head.appendChild(name);
    head.appendChild(document.createTextNode(" " + percent(Math.exp(entry[1]))));
    var parts = [head];
    var alternatives = entry[2] || [];
    if (alternatives.length) {
      var label = document.createElement("p");
      label.className = "popup-label";
      label.textContent = "Most likely tokens here:";
      var list = document.createElement("ul");
      var listed = false;
      alternatives.forEach(function (alt) {
        var chosen = alt[0] === entry[0] && Math.abs(alt[1] - entry[1]) < 1e-6;
        listed = listed || chosen;
        row(list, alt[0], alt[1], chosen);
      });
      parts.push(label, list);
      if (!listed) {
        var note = document.createElement("p");
        note.className = "popup-label";
        note.textContent = "The chosen token was not among them (it was sampled).";
        parts.push(note);
      }
    }
    popup.replaceChildren.apply(popup, parts);
    popup.hidden = false;
    span.setAttribute("aria-describedby", popup.id);
    place(span);
  }

  // Below the token (above it when there is no room below in the window), kept inside the panel's width.
  function place(span) {
    var box = panel.getBoundingClientRect();
    var rects = span.getClientRects();
    var r = rects.length ? rects[0] : span.getBoundingClientRect();
    var width = popup.offsetWidth;
    var left = Math.min(Math.max(0, r.left - box.left), Math.max(0, box.width - width));
    var top = r.bottom - box.top + 4;
    if (r.bottom + popup.offsetHeight + 8 > window.innerHeight && r.top - popup.offsetHeight - 8 > 0) {
      top = r.top - box.top - popup.offsetHeight - 4;
    }
    popup.style.left = left + "px";
    popup.style.top = top + "px";
  }

  function hide() {
    popup.hidden = true;
    if (current) current.removeAttribute("aria-describedby");
    current = null;
  }

  function setPressed(on) {
    if (on && !built) build();
    button.setAttribute("aria-pressed", on ? "true" : "false");
    panel.hidden = !on;
    output.hidden = on;
    if (!on) hide();
  }

  function load() {
    button.setAttribute("aria-busy", "true");
    return fetch(root.dataset.jsonUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (job) { take(job); })
      .finally(function () { button.removeAttribute("aria-busy"); });
  }

  function take(job) {
    if (!job.logprobs || !job.logprobs.length) return;
    if (!entries || entries.length !== job.logprobs.length) built = false;
    entries = job.logprobs;
    setStat(job.confidence);
    button.hidden = false;
    if (built === false && button.getAttribute("aria-pressed") === "true") build();
  }

  button.addEventListener("click", function () {
    var on = button.getAttribute("aria-pressed") !== "true";
    if (on && !entries) {
      load().then(function () { if (entries) setPressed(true); }).catch(function () {});
      return;
    }
    setPressed(on);
  });

  root.addEventListener("job:end", function (event) { take(event.detail); });

  function tokenOf(node) {
    return node && node.closest ? node.closest(".confidence-tokens .tok") : null;
  }

  tokens.addEventListener("mouseover", function (event) {
    var span = tokenOf(event.target);
    if (span && span !== current) show(span);
  });
  tokens.addEventListener("focusin", function (event) {
    var span = tokenOf(event.target);
    if (span) show(span);
  });
  tokens.addEventListener("focusout", function (event) {
    if (!tokenOf(event.relatedTarget)) hide();
  });
  // The popup stays while the pointer moves from the token onto it (so it can be read and selected).
  panel.addEventListener("mouseleave", function () {
    if (current && current !== document.activeElement) hide();
  });
  tokens.addEventListener("mouseout", function (event) {
    if (!tokenOf(event.relatedTarget) && event.relatedTarget !== popup && !popup.contains(event.relatedTarget) &&
        current && current !== document.activeElement) hide();
  });
  popup.addEventListener("mouseleave", function (event) {
    if (!tokenOf(event.relatedTarget) && current && current !== document.activeElement) hide();
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && !popup.hidden) hide();
  });
  window.addEventListener("resize", function () { if (current && !popup.hidden) place(current); });
})();
