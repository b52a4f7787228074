// The console's only script; every page works without it (plain links and forms), it adds
// the live feeds' bookkeeping. Loaded once by base.html (a page may include it again: the
// guard keeps the handlers single).
(function () {
  if (window.consoleScriptLoaded) { return; }
  window.consoleScriptLoaded = true;

  // A WebSocket that reconnects replays from the event id the page was rendered with, so
  // events already in a session's log can arrive again: append each one once.
  document.body.addEventListener("htmx:oobBeforeSwap", function (evt) {
    var fragment = evt.detail.fragment;
    var first = fragment && fragment.firstElementChild;
    if (first && /^event-\d+$/.test(first.id) && document.getElementById(first.id)) {
      evt.detail.shouldSwap = false;
    }
  });

  // Say whether the live feed is connected (the label inside the feed's element, else the page's).
  function setLiveState(evt, text) {
    var card = evt.target.closest && evt.target.closest("[ws-connect]");
    var label = (card && card.querySelector(".live-state")) || document.querySelector(".live-state");
    if (label) { label.textContent = text; label.classList.toggle("error", text !== "live"); }
  }
  document.body.addEventListener("htmx:wsOpen", function (evt) { setLiveState(evt, "live"); });
  document.body.addEventListener("htmx:wsClose", function (evt) { setLiveState(evt, "disconnected"); });

  // Keep keyboard focus across swaps: a replaced element takes its focus with it, so find the
  // same control (by id, else by link target or button value) in what replaced it.
  var pendingFocus = null;
  function focusKey(element) {
    if (!element || element === document.body) { return null; }
    if (element.id) { return "#" + CSS.escape(element.id); }
    if (element.getAttribute("href")) { return element.tagName.toLowerCase() + '[href="' + CSS.escape(element.getAttribute("href")) + '"]'; }
    var form = element.closest("form[action]");
    if (form && element.value) { return 'form[action="' + CSS.escape(form.getAttribute("action")) + '"] [value="' + CSS.escape(element.value) + '"]'; }
    return null;
  }
  function rememberFocus(target) {
    var active = document.activeElement;
    if (target && active && target.contains(active)) { pendingFocus = { key: focusKey(active), container: target.id }; }
  }
  function restoreFocus() {
    if (!pendingFocus) { return; }
    var wanted = pendingFocus; pendingFocus = null;
    var found = wanted.key && document.querySelector(wanted.key);
    if (!found && wanted.container) {
      // The control is gone (an answered approval): go to the next one, else the heading.
      var container = document.getElementById(wanted.container);
      found = container && (container.querySelector("button, a[href]") || container.querySelector("[tabindex='-1']"));
    }
    if (found) { found.focus({ preventScroll: true }); }
  }
  document.body.addEventListener("htmx:oobBeforeSwap", function (evt) { rememberFocus(evt.detail.target); });
  document.body.addEventListener("htmx:beforeSwap", function (evt) { rememberFocus(evt.detail.target); });
  document.body.addEventListener("htmx:oobAfterSwap", restoreFocus);
  document.body.addEventListener("htmx:afterSettle", restoreFocus);
  // After a form swap with errors, move focus to its summary so a screen reader reads it.
  document.body.addEventListener("htmx:afterSettle", function (evt) {
    // An outerHTML swap leaves evt.detail.target detached: look the element up again by its id.
    var target = evt.detail.target;
    var swapped = (target && target.id && document.getElementById(target.id)) || target;
    var alert = swapped && swapped.querySelector && swapped.querySelector("[role=alert][tabindex='-1']");
    if (alert) { alert.focus(); }
  });

  // The monitor header's clock: a running session's elapsed time ticks between pushes (each push
  // replaces the element with the server's figure, so it never drifts far).
  function formatDuration(seconds) {
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    function two(n) { return (n < 10 ? "0" : "") + n; }
    if (h) { return h + "h " + two(m) + "m"; }
    if (m) { return m + "m " + two(s) + "s"; }
    return s + "s";
  }
  setInterval(function () {
    document.querySelectorAll("[data-ticking]").forEach(function (clock) {
      var seconds = parseInt(clock.getAttribute("data-elapsed"), 10) + 1;
      clock.setAttribute("data-elapsed", String(seconds));
      clock.textContent = formatDuration(seconds);
    });
    // The approvals inbox: the time left before a request's default answer applies counts down
    // between pushes (a push or an answer replaces the list with the server's figures).
    document.querySelectorAll("[data-countdown]").forEach(function (left) {
      var seconds = Math.max(0, parseInt(left.getAttribute("data-countdown"), 10) - 1);
      left.setAttribute("data-countdown", String(seconds));
      left.textContent = seconds + " s left";
      left.classList.toggle("error", seconds < 60);
    });
  }, 1000);
})();
