// Markdown for answers while they stream, and copy buttons. The model's text is untrusted: markdown-it renders it
// with raw HTML off (a tag the model writes stays text), images off, and DOMPurify then keeps only the elements
// and attributes the server's sanitizer (generation/rendering.py, nh3) allows, so the live view and the stored
// view agree. Code blocks get the server's structure (div.highlight > pre[tabindex=0] > code, focusable because
// they scroll sideways; tabindex is set after sanitizing, never taken from the text); Pygments' colours arrive
// with the stored rendering when the job ends.
(function () {
  "use strict";
  var ALLOWED_TAGS = ["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li", "strong",
    "em", "s", "del", "code", "pre", "a", "table", "thead", "tbody", "tr", "th", "td", "div", "span"];
  var md = null;
  var purifyReady = false;

  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  function parser() {
    if (md || !window.markdownit) return md;
    md = window.markdownit("commonmark", { html: false, breaks: true, linkify: false });
    md.enable(["table", "strikethrough"]);
    md.disable("image");
    var fence = function (tokens, idx) {
      var token = tokens[idx];
      var language = (token.info || "").trim().split(/\s+/)[0].toLowerCase().replace(/[^\w+#.-]/g, "");
      var code = token.content.replace(/\n$/, "");
      return '<div class="highlight"><pre><code' + (language ? ' class="language-' + language + '"' : "") + ">" +
        escapeHtml(code) + "</code></pre></div>\n";
    };
    md.renderer.rules.fence = fence;
    md.renderer.rules.code_block = fence;
    return md;
  }

  function sanitize(html) {
    if (!window.DOMPurify) return null;
    if (!purifyReady) {
      window.DOMPurify.addHook("afterSanitizeAttributes", function (node) {
        if (node.tagName === "A") node.setAttribute("rel", "noopener noreferrer nofollow");
        if (node.tagName === "PRE") node.setAttribute("tabindex", "0"); // scrolls sideways: the keyboard must reach it
      });
      purifyReady = true;
    }
    return window.DOMPurify.sanitize(html, {
      ALLOWED_TAGS: ALLOWED_TAGS, ALLOWED_ATTR: ["class", "href", "title", "start"],
      ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i, FORBID_ATTR: ["style"],
    });
  }

  // Sets `element`'s content to the Markdown rendering of `text`; plain text when a library is missing.
  function render(element, text) {
    var m = parser();
    var html = m ? sanitize('<div class="markdown">' + m.render(text) + "</div>") : null;
    if (html === null) {
      element.textContent = text;
      element.classList.add("plain");
    } else {
      element.innerHTML = html;
      element.classList.remove("plain");
    }
    addCopyButtons(element);
  }

  // --- copying ----------------------------------------------------------------------------------------------

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    return new Promise(function (resolve, reject) { // plain http on a remote host: the old way
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      if (ok) resolve(); else reject(new Error("copy refused"));
    });
  }

  function flash(button, label) {
    var original = button.dataset.label || button.textContent;
    button.dataset.label = original;
    button.textContent = label;
    clearTimeout(button._copyTimer);
    button._copyTimer = setTimeout(function () { button.textContent = original; }, 2000);
  }

  // Every code block in `container` gets a Copy button (once).
  function addCopyButtons(container) {
    container.querySelectorAll(".highlight").forEach(function (block) {
      if (block.querySelector(":scope > .copy-code")) return;
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code small secondary";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy this code");
      block.insertBefore(button, block.firstChild);
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest(".copy-code, [data-copy]") : null;
    if (!button) return;
    var text;
    if (button.classList.contains("copy-code")) {
      var code = button.parentElement.querySelector("pre");
      text = code ? code.textContent.replace(/\n$/, "") : "";
    } else {
      var root = button.closest("[data-job]");
      text = root ? root.dataset.raw || "" : "";
    }
    copyText(text).then(function () { flash(button, "Copied"); }, function () { flash(button, "Copy failed"); });
  });

  window.llmsiteMarkdown = { render: render, addCopyButtons: addCopyButtons, copyText: copyText };
})();
