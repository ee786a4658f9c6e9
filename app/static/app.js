/* EventFlow dashboard: live updates over server-sent events, copy buttons, confirmations.
   Every page works without this file; it only adds liveliness. No inline script anywhere (CSP). */
(function () {
  "use strict";

  var MAX_ROWS = 200;

  function statusBadge(state) {
    var badge = document.querySelector("[data-live-status]");
    if (!badge) return;
    badge.hidden = false;
    badge.setAttribute("data-state", state);
    badge.textContent = state === "live" ? "Live" : "Reconnecting…";
  }

  /* An EventSource that comes back after the server refused it (a 503 closes it for good). The
     browser resends the last SSE id only on its own reconnects, so a new EventSource carries it in
     the URL (`cursor`), and resumes without a gap. */
  function connect(url, handlers) {
    var delay = 1000;
    var source = null;
    var last = "";
    function resumeUrl() {
      if (!last) return url;
      var resume = new URL(url, window.location.href);
      resume.searchParams.set("cursor", last);
      return resume.pathname + resume.search;
    }
    function open() {
      source = new EventSource(resumeUrl());
      source.onopen = function () { delay = 1000; statusBadge("live"); };
      source.onerror = function () {
        statusBadge("reconnecting");
        if (source.readyState === EventSource.CLOSED) {
          window.setTimeout(retry, delay);
          delay = Math.min(delay * 2, 30000);
        }
      };
      Object.keys(handlers).forEach(function (name) {
        source.addEventListener(name, function (e) {
          if (e.lastEventId) last = e.lastEventId;
          handlers[name](e);
        });
      });
    }
    /* A refused stream may mean the session ended (logged out, expired): then the page itself
       redirects to the login page, so load it; otherwise (a 503, a proxy's 502) try again. */
    function retry() {
      fetch(window.location.href, { redirect: "manual", credentials: "same-origin" }).then(function (r) {
        if (r.type === "opaqueredirect" || r.status === 401) window.location.reload(); else open();
      }, open);
    }
    open();
    window.addEventListener("pagehide", function () { if (source) source.close(); });
  }

  function make(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;  // text, never parsed as HTML
    return node;
  }

  /* One row of the events table from the feed's fields, as templates/_event_row.html renders it
     (tests/browser compares the two). */
  function eventRow(m) {
    var row = make("tr", "fresh");
    row.setAttribute("data-entry", m.entry_id);
    function cell(label, className, text) {
      var td = make("td", className, text);
      td.setAttribute("data-label", label);
      row.appendChild(td);
      return td;
    }
    var iso = new Date(Number(m.entry_id.split("-")[0])).toISOString();
    var time = make("time", "", iso.slice(0, 10) + " " + iso.slice(11, 19) + " UTC");
    time.setAttribute("datetime", iso);
    cell("Received", "nowrap").appendChild(time);
    var link = make("a", "strong-link", m.type);
    link.setAttribute("href", "/events/" + encodeURIComponent(m.entry_id));
    var type = cell("Type");
    type.appendChild(link);
    if (m.invalid) type.append(" ", make("span", "badge badge-bad", "invalid"));
    cell("Source", "", m.source);
    cell("Subject", "", m.subject || "\u2014");
    cell("Event id").appendChild(make("code", "id", m.id));
    return row;
  }

  /* Events page: new rows arrive at the top of the table. */
  function liveFeed(tbody) {
    connect(tbody.getAttribute("data-live-feed"), {
      event: function (e) {
        var message = JSON.parse(e.data);
        if (tbody.querySelector('tr[data-entry="' + CSS.escape(message.entry_id) + '"]')) return;
        var empty = tbody.querySelector(".empty-row");
        if (empty) empty.remove();
        tbody.insertBefore(eventRow(message), tbody.firstChild);
        while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
      },
      reset: function () { window.location.reload(); }
    });
  }

  /* Overview, consumers, event lifecycle: the server sends the section's new HTML when it changes. */
  function liveSection(element) {
    connect(element.getAttribute("data-live-replace"), {
      update: function (e) { element.innerHTML = e.data; refreshTimes(element); }
    });
  }

  function ago(ms) {
    var s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (s >= 86400) return Math.floor(s / 86400) + " d ago";
    if (s >= 3600) return Math.floor(s / 3600) + " h ago";
    if (s >= 60) return Math.floor(s / 60) + " min ago";
    return s + " s ago";
  }

  function refreshTimes(root) {
    (root || document).querySelectorAll("time[data-ago]").forEach(function (t) {
      var ms = Date.parse(t.getAttribute("datetime"));
      if (!isNaN(ms)) t.textContent = ago(ms);
    });
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var target = document.querySelector(button.getAttribute("data-copy"));
        if (!target) return;
        var text = "value" in target && target.value !== undefined ? target.value : target.textContent;
        var done = function () {
          var label = button.textContent;
          button.textContent = "Copied";
          button.classList.add("copied");
          window.setTimeout(function () { button.textContent = label; button.classList.remove("copied"); }, 1500);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () { select(target); });
        } else {
          select(target);
          try { if (document.execCommand("copy")) done(); } catch (err) { /* the text stays selected */ }
        }
      });
    });
  }

  function select(target) {
    if (target.select) { target.select(); return; }
    var range = document.createRange();
    range.selectNodeContents(target);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function confirmations() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  }

  function selectAll() {
    document.querySelectorAll("[data-select-all]").forEach(function (box) {
      var cls = box.getAttribute("data-select-all");
      box.addEventListener("change", function () {
        document.querySelectorAll("input." + cls).forEach(function (c) { c.checked = box.checked; });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live-feed]").forEach(liveFeed);
    document.querySelectorAll("[data-live-replace]").forEach(liveSection);
    copyButtons();
    confirmations();
    selectAll();
    window.setInterval(refreshTimes, 10000);
  });
})();
