// The console's only script. A WebSocket that reconnects replays from the event id the page
// was rendered with, so events already in the log can arrive again: append each one once.
document.body.addEventListener("htmx:oobBeforeSwap", function (evt) {
  var fragment = evt.detail.fragment;
  var first = fragment && fragment.firstElementChild;
  if (first && /^event-\d+$/.test(first.id) && document.getElementById(first.id)) {
    evt.detail.shouldSwap = false;
  }
});

// Say whether the live feed is connected.
function setLiveState(evt, text) {
  var card = evt.target.closest && evt.target.closest("[ws-connect]");
  var label = card && card.querySelector(".live-state");
  if (label) { label.textContent = text; label.classList.toggle("error", text !== "live"); }
}
document.body.addEventListener("htmx:wsOpen", function (evt) { setLiveState(evt, "live"); });
document.body.addEventListener("htmx:wsClose", function (evt) { setLiveState(evt, "disconnected"); });

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
}, 1000);
